"""The loader over every source: batches by step, padded evaluation, hosts' shares, workers."""

import hashlib

import numpy as np
import pytest

from alexnet_jax import data, errors
from alexnet_jax.data import prepare, synthetic
from tests.conftest import tiny_config, write_image_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """3 classes, 7 training and 3 validation JPEGs each, of assorted sizes."""
  return write_image_folder(tmp_path_factory.mktemp('images'))


@pytest.fixture(scope='module')
def prepared(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp('store') / 'images_73'
  prepare.prepare(f'image_folder:{folder}', str(out),
                  prepare.Options(size=73, images_per_shard=4, workers=0), progress=False)
  return str(out)


def _config(dataset, **overrides):
  config = tiny_config()
  config.dataset = dataset
  config.global_batch_size = 4
  config.update(overrides)
  return config


def _sources(folder, prepared):
  return {'synthetic': _config('synthetic'), 'folder': _config(f'image_folder:{folder}'),
          'store': _config(prepared)}


def _fingerprint(image) -> str:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.mark.parametrize('source', ['synthetic', 'folder', 'store'])
def test_train_batches_are_a_function_of_the_step(source, folder, prepared):
  config = _sources(folder, prepared)[source]
  dataset = data.create(config, 4)
  steps = dataset.steps_per_epoch
  stream = dataset.train_batches(0)
  first = [next(stream) for _ in range(2 * steps + 1)]
  resumed = dataset.train_batches(steps - 1)   # one step before an epoch boundary
  for expected in first[steps - 1:]:
    got = next(resumed)
    for key, value in expected.arrays().items():
      np.testing.assert_array_equal(got.arrays()[key], value)
  batch = first[0]
  assert batch.image.shape == (4, 73, 73, 3) and batch.image.dtype == np.uint8
  assert set(batch.arrays()) == {'image', 'label'}
  # An epoch shows no image twice, and the next epoch is another order of the same images.
  epochs = [[_fingerprint(image) for b in first[e * steps:(e + 1) * steps] for image in b.image]
            for e in (0, 1)]
  assert len(set(epochs[0])) == len(epochs[0]) == steps * 4
  # Only the images an epoch leaves over (fewer than a batch) may differ between the two.
  left_over = dataset.train_examples - steps * 4
  assert epochs[0] != epochs[1]
  assert len(set(epochs[0]) ^ set(epochs[1])) <= 2 * left_over


def _take(stream, n):
  return [next(stream) for _ in range(n)]


@pytest.mark.parametrize('source', ['synthetic', 'folder', 'store'])
def test_eval_pass_counts_each_example_once_with_padding_masked(source, folder, prepared):
  config = _sources(folder, prepared)[source]
  if source == 'synthetic':
    config.synthetic.eval_examples = 7
  dataset = data.create(config, 4)
  batches = list(dataset.eval_batches())
  assert dataset.eval_steps == len(batches) == -(-dataset.eval_examples // 4)
  mask = np.concatenate([b.mask for b in batches])
  assert mask.sum() == dataset.eval_examples and mask[:dataset.eval_examples].all()
  images = np.concatenate([b.image for b in batches])[mask == 1]
  assert len({_fingerprint(image) for image in images}) == dataset.eval_examples
  if source != 'synthetic':
    labels = np.concatenate([b.label for b in batches])[mask == 1]
    np.testing.assert_array_equal(labels, np.repeat(np.arange(3), 3))   # in the split's order


@pytest.mark.parametrize('source', ['synthetic', 'folder', 'store'])
@pytest.mark.parametrize('train_split, eval_split', [('train', 'validation'),
                                                     ('train[:90%]', 'validation[2:-1]')])
def test_two_hosts_read_the_global_batches_of_one_exactly_once(source, train_split, eval_split,
                                                               folder, prepared):
  config = _sources(folder, prepared)[source]
  config.train_split, config.eval_split = train_split, eval_split
  one = data.create(config, 4)
  hosts = [data.create(config, 4, process_index=h, process_count=2) for h in (0, 1)]
  for host in hosts:   # every host counts the same examples, steps and eval steps
    assert (host.train_examples, host.steps_per_epoch, host.eval_examples, host.eval_steps) == (
        one.train_examples, one.steps_per_epoch, one.eval_examples, one.eval_steps)
  streams = [host.train_batches(0) for host in hosts]
  for expected in _take(one.train_batches(0), one.steps_per_epoch + 1):
    parts = [next(stream) for stream in streams]
    assert all(len(p.label) == 2 for p in parts)
    for key, value in expected.arrays().items():
      np.testing.assert_array_equal(np.concatenate([p.arrays()[key] for p in parts]), value)
  host_evals = [list(host.eval_batches()) for host in hosts]
  assert [len(e) for e in host_evals] == [one.eval_steps] * 2
  seen = [_fingerprint(image) for batches in host_evals for b in batches
          for image, m in zip(b.image, b.mask) if m]
  whole = [_fingerprint(image) for b in one.eval_batches()
           for image, m in zip(b.image, b.mask) if m]
  assert sorted(seen) == sorted(whole) and len(whole) == one.eval_examples


def test_sliced_splits_count_as_tfds_counts_them(prepared):
  config = _config(prepared, train_split='train[:90%]', eval_split='validation[-4:]')
  dataset = data.create(config, 4)
  assert dataset.train_examples == 19 and dataset.eval_examples == 4   # round(0.9 * 21) = 19


class _Sized:
  """A source of n images that is never read: the counts alone."""
  stores_jpegs = False

  def __init__(self, n):
    self._n = n

  def __len__(self):
    return self._n

  def __getitem__(self, index):
    raise AssertionError('not read')


def test_imagenets_counts_on_four_hosts():
  """1,281,167 training and 50,000 validation images at batch 128 over 4 hosts: every host
  runs 10,009 steps an epoch and 391 evaluation steps, the last one 80 images short."""
  for host in range(4):
    imagenet = data.loader.make_data(
        data.loader.Split(_Sized(1_281_167), 0, 1_281_167), data.loader.Split(_Sized(50_000), 0,
                                                                              50_000),
        name='imagenet2012', num_classes=1000, image_size=256, global_batch=128, seed=0,
        reading=data.loader.Reading(process_index=host, process_count=4))
    assert (imagenet.steps_per_epoch, imagenet.eval_steps) == (10_009, 391)


def test_worker_processes_read_the_same_batches(prepared):
  config = _config(prepared)
  in_process = data.create(config, 4, workers=0)
  workers = data.create(config, 4, workers=2)
  stream = workers.train_batches(3)
  try:
    for expected in _take(in_process.train_batches(3), 4):
      got = next(stream)
      for key, value in expected.arrays().items():
        np.testing.assert_array_equal(got.arrays()[key], value)
  finally:
    stream.close()


def test_a_dataset_not_prepared_names_the_command_that_prepares_it(tmp_path):
  config = _config('imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(errors.DataError) as raised:
    data.create(config, 4)
  message = str(raised.value)
  assert 'is not prepared' in message
  assert (f'python -m alexnet_jax.commands.prepare --source=imagenet2012 --size=73 '
          f'--out={tmp_path / "imagenet2012"}') in message and '--manual_dir' in message


def test_a_store_of_another_size_or_without_the_split_is_named(prepared):
  with pytest.raises(errors.DataError, match='set --config.resize_size=73'):
    data.create(_config(prepared, resize_size=96, image_size=64), 4)
  with pytest.raises(errors.DataError, match=r"no split 'test'; it has \['train', 'validation'\]"):
    data.create(_config(prepared, eval_split='test'), 4)


@pytest.mark.parametrize('split, message', [('train[:0]', 'is empty'),
                                            ('train[1:2:3]', 'is not a split')])
def test_bad_split_specs_are_named(prepared, split, message):
  with pytest.raises(errors.DataError, match=message):
    data.create(_config(prepared, train_split=split), 4)


def test_fewer_training_images_than_one_batch_are_named(prepared):
  with pytest.raises(errors.DataError, match='fewer than one global batch of 32'):
    data.create(_config(prepared, global_batch_size=32), 32)


def test_synthetic_classes_carry_signal():
  # A nearest-class-mean classifier on the gratings' contrast per colour channel already
  # beats chance (10%) by far: the classes carry signal a network can learn.
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 20)
  images = synthetic.make_images(rng, labels, 64, 10).astype(np.float32)
  colour = images.std(axis=(1, 2))
  means = np.stack([colour[labels == c].mean(0) for c in range(10)])
  test_labels = np.arange(10).repeat(5)
  test = synthetic.make_images(rng, test_labels, 64, 10).astype(np.float32).std((1, 2))
  predicted = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (predicted == test_labels).mean() > 0.3


def test_small_images_are_upsampled_to_the_stored_size(tmp_path):
  """32x32 images, as CIFAR's, read at 72x72: each row is its image enlarged by Pillow's
  bilinear filter, the paper's rescaling, not a crop or a padding of it."""
  from PIL import Image
  root = write_image_folder(tmp_path / 'images', train=2, val=2)
  expected = []
  for path in sorted(root.rglob('*.jpg')):
    with Image.open(path) as image:
      image.resize((32, 32)).save(path, quality=95)
    with Image.open(path) as small:
      expected.append(np.asarray(small.convert('RGB').resize((72, 72), Image.BILINEAR), np.int16))
  config = tiny_config()
  config.dataset, config.resize_size, config.image_size = f'image_folder:{root}', 72, 64
  dataset = data.create(config, 4)
  rows = [row for batch in dataset.eval_batches() for row, mask in zip(batch.image, batch.mask)
          if mask]
  assert len(rows) == 6 and all(row.shape == (72, 72, 3) for row in rows)
  for row in rows:
    assert min(np.abs(row.astype(np.int16) - e).max() for e in expected) <= 1
