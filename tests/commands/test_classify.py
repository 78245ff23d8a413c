"""classify: the top-5 classes and probabilities of real Imagenette JPEGs, against the eval
step's forward pass; ImageNet wnids shown by their WordNet words; unreadable images named."""

import json
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import data, train
from alexnet_jax.commands import classify, weights
from alexnet_jax.commands.evaluate_workdirs import evaluate_workdirs
from alexnet_jax.data import image_files, image_folder, prepare
from alexnet_jax.interop import class_names, torch_save
from alexnet_jax.parallel import placement, steps
from alexnet_jax.workdir import color_stats, trained
from configs import alexnet
from tests.commands import test_weights
from tests.conftest import IMAGENETTE, process_env
from tests.data.test_image_files import finishes_within
from tests.data.test_prepare import add_hostile_files

ROOT = pathlib.Path(__file__).resolve().parents[2]
needs_imagenette = pytest.mark.skipif(
    not IMAGENETTE.is_dir(),
    reason=f'needs real JPEGs in {IMAGENETTE} (the shared data folder beside the checkout)')

# The Imagenette classes as ../shared/data/README.md names and numbers them (fastai's names).
IMAGENETTE_CLASSES = {
    'n01440764': (0, 'tench'), 'n02102040': (217, 'English springer spaniel'),
    'n02979186': (482, 'cassette player'), 'n03000684': (491, 'chainsaw'),
    'n03028079': (497, 'church'), 'n03394916': (566, 'French horn'),
    'n03417042': (569, 'garbage truck'), 'n03425413': (571, 'gas pump'),
    'n03445777': (574, 'golf ball'), 'n03888257': (701, 'parachute')}


def test_wordnet_names_follow_imagenets_order_and_name_its_classes():
  import tensorflow_datasets as tfds   # its ImageNet metadata; TensorFlow is not imported
  assert class_names.imagenet_wnids() == tfds.builder('imagenet2012').info.features[
      'label'].names
  names = class_names.display_names([], 1000)
  for wnid, (index, name) in IMAGENETTE_CLASSES.items():
    assert class_names.imagenet_wnids()[index] == wnid
    assert name.lower() in names[index].lower().split(', '), (wnid, names[index])
  # Folder names that are wnids get their words; others stay as they are.
  assert class_names.display_names(['n01440764', 'cat'], 3) == [
      'tench, Tinca tinca', 'cat', 'class 2']


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """A checkpoint of torchvision's AlexNet at 1/64 of its width, 1000 classes, known random
  weights (imported, so its model.json names ImageNet's classes), and a folder of 20 training
  and 10 validation Imagenette JPEGs, one of each class in val/."""
  root = tmp_path_factory.mktemp('imagenette')
  for wnid in IMAGENETTE_CLASSES:
    for split, count in (('train', 2), ('val', 1)):
      (root / split / wnid).mkdir(parents=True)
      for source in sorted((IMAGENETTE / split / wnid).iterdir())[:count]:
        (root / split / wnid / source.name).symlink_to(source)
  rng = np.random.default_rng(0)
  state = {name: (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 5)
                  ).astype(np.float32)
           for name, shape in test_weights.torch_shapes(width=1 / 64, num_classes=1000).items()}
  weights_file = tmp_path_factory.mktemp('file') / 'narrow.pth'
  torch_save.write_state_dict(weights_file, state)
  workdir = str(tmp_path_factory.mktemp('work'))
  weights.import_weights(str(weights_file), workdir, alexnet.get_config('torchvision'))
  # How evaluate_workdirs reads the same workdir on this folder.
  config = alexnet.get_config('torchvision')
  config.width, config.global_batch_size, config.data_workers = 1 / 64, 10, 0
  config.dataset, config.imagenet_wnid_labels = f'image_folder:{root}', True
  return config, workdir, root


@pytest.fixture(scope='module')
def eval_batch(imported):
  """The validation batch as evaluate_workdirs reads it (image_folder, decoded as read)."""
  config, _, _ = imported
  batches = data.create(config, 10).eval_batches()
  batch = next(iter(batches))
  batches.close()
  return batch


def _eval_counts(config, workdir, batch, ten_patches):
  """counts(labels): the eval step's sums over the 10 validation images, repeated for each
  row of `labels` [copies, 10], in one padded batch of 60 (one shape, one compile)."""
  mesh = placement.make_mesh()
  model = train.create_model(config, 1000)
  params, _ = trained.restore_saved_params(workdir, 'latest')
  params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  eval_step = steps.make_eval_step(model, color_stats.augmentation(config, workdir), mesh,
                                      ten_patches)

  def counts(labels):
    labels = np.asarray(labels, np.int32).reshape(-1)
    padded = {'image': np.tile(batch.image, (6, 1, 1, 1)), 'label': np.zeros(60, np.int32),
              'mask': np.zeros(60, np.float32)}
    padded['label'][:labels.size], padded['mask'][:labels.size] = labels, 1
    return jax.device_get(eval_step([params], placement.shard_batch(
        padded, mesh, placement.batch_spec(model, mesh))))

  return counts


@needs_imagenette
@pytest.mark.parametrize('ten_patches', [False, True])
def test_top5_and_probabilities_are_the_eval_steps(imported, eval_batch, ten_patches):
  config, workdir, root = imported
  paths, labels = image_folder.open_folder(root, ['train', 'validation'],
                                           imagenet_wnid_labels=True).splits['validation']
  classifier = classify.load(workdir)
  results, failures = classify.classify(classifier, list(paths), top=6, ten_patches=ten_patches)
  assert not failures and [r['image'] for r in results] == list(paths)
  counts = _eval_counts(config, workdir, eval_batch, ten_patches)
  np.testing.assert_array_equal(eval_batch.label, labels)   # the same images, same order
  ranked = np.array([[entry['index'] for entry in r['top']] for r in results])   # [10, 6]
  probs = np.array([[entry['probability'] for entry in r['top']] for r in results])
  # The eval step finds every one of classify's top 5 in its own top 5 (and its top 1 as
  # its top 1), none of the sixth: the two top-5 sets are the same.
  assert counts(ranked[:, 0])['top1_correct'] == 10
  top5 = counts(ranked[:, :5].T)
  assert top5['top5_correct'] == 50
  assert counts(ranked[:, 5])['top5_correct'] == 0
  # Its loss is -log of the probabilities classify printed.
  np.testing.assert_allclose(top5['loss_sum'], -np.log(probs[:, :5]).sum(), rtol=1e-5)
  assert results[0]['top'][0]['name'] == class_names.imagenet_wordnet()[
      results[0]['top'][0]['class']]


@needs_imagenette
def test_evaluate_workdirs_reads_the_imported_workdir_and_agrees(imported):
  config, workdir, root = imported
  paths, labels = image_folder.open_folder(root, ['train', 'validation'],
                                           imagenet_wnid_labels=True).splits['validation']
  results, _ = classify.classify(classify.load(workdir), list(paths), top=1000)
  true_class = [next(e['probability'] for e in r['top'] if e['index'] == label)
                for r, label in zip(results, labels)]
  evaluated = evaluate_workdirs(config, [workdir], 'latest')[workdir]
  assert evaluated['examples'] == 10 and evaluated['step'] == 0
  # Its loss is the mean -log of the probability classify gives each image's true class.
  assert evaluated['loss'] == pytest.approx(-np.mean(np.log(true_class)), rel=1e-5)


@needs_imagenette
def test_folders_are_expanded_and_bad_images_named_while_the_others_are_classified(
    imported, tmp_path):
  _, workdir, root = imported
  truncated = tmp_path / 'truncated.jpg'
  good = sorted((root / 'val' / 'n01440764').iterdir())[0]
  truncated.write_bytes(good.read_bytes()[:300])
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  paths, missing = classify.image_paths([str(root / 'val'), str(truncated), str(text),
                                         str(tmp_path / 'absent.jpg')])
  assert len(paths) == 12 and missing == [(str(tmp_path / 'absent.jpg'), 'no such file or folder')]
  classifier = classify.load(workdir)
  results, failures = classify.classify(classifier, paths)
  assert len(results) == 10 and all(len(r['top']) == 5 for r in results)
  assert [path for path, _ in failures] == [str(truncated), str(text)]
  assert all('cannot be decoded' in why for _, why in failures)
  # Decoded a batch of 3 at a time, the bad two in the last batch: the same answers.
  in_threes, failures_in_threes = classify.classify(classifier, paths, batch_size=3)
  assert failures_in_threes == failures
  assert [r['image'] for r in in_threes] == [r['image'] for r in results]
  for small, whole in zip(in_threes, results):
    assert [e['index'] for e in small['top']] == [e['index'] for e in whole['top']]
    np.testing.assert_allclose([e['probability'] for e in small['top']],
                               [e['probability'] for e in whole['top']], rtol=1e-5)


@needs_imagenette
def test_the_command_prints_json_and_exits_1_naming_the_bad_image(imported, tmp_path):
  _, workdir, root = imported
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'\xff\xd8 not really a JPEG')
  env = process_env()
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.classify', f'--workdir={workdir}', '--json',
       str(root / 'val' / 'n03888257'), str(bad)], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  out = json.loads(result.stdout)
  assert [r['image'] for r in out['images']] == [
      str(p) for p in sorted((root / 'val' / 'n03888257').iterdir())]
  assert {entry['name'] for entry in out['images'][0]['top']} <= set(
      class_names.imagenet_wordnet().values())
  assert out['errors'][0]['image'] == str(bad)
  assert f'error: {bad} cannot be decoded' in result.stderr


def _uniform_classifier(size: int) -> classify.Classifier:
  """Equal probabilities for 2 classes: what is read, not what a model says, is tested."""
  return classify.Classifier(ml_collections.ConfigDict({'resize_size': size}),
                             lambda images, ten_patches: np.full((len(images), 2), 0.5),
                             ('a', 'b'), ['a', 'b'], 0)


def test_classify_reads_and_refuses_exactly_the_files_prepare_does(tmp_path):
  root = tmp_path / 'images'
  for split in ('train', 'val'):
    (root / split / 'a').mkdir(parents=True)
    for i in range(2):
      pixels = np.random.default_rng(i).integers(0, 256, (50 + 10 * i, 60, 3), np.uint8)
      Image.fromarray(pixels).save(root / split / 'a' / f'{i}.jpg', quality=90)
  add_hostile_files(root / 'train' / 'a')
  (root / 'train' / 'a' / 'big.bmp').write_bytes(b'BM' + bytes(20_000))   # over a cap of 16 KiB
  limits = image_files.Limits(max_bytes=2**14)
  paths, missing = finishes_within(30, classify.image_paths, [str(root / 'train' / 'a')])
  assert not missing and len(paths) == 9
  results, failures = finishes_within(60, classify.classify, _uniform_classifier(32), paths,
                                      batch_size=4, limits=limits)
  why = dict(failures)
  assert why[str(root / 'train' / 'a' / 'fifo.jpg')] == 'cannot be read (a FIFO, not a regular file)'
  assert why[str(root / 'train' / 'a' / 'big.bmp')] == (
      'cannot be read (20,002 bytes, over the cap of 16,384 bytes an image may have '
      '(prepare and classify take --max_image_bytes))')
  assert 'a JPEG cut short' in why[str(root / 'train' / 'a' / 'grey.jpg')]
  assert 'not a JPEG, PNG, GIF or BMP file' in why[str(root / 'train' / 'a' / 'tiff.png')]
  store = prepare.prepare(f'image_folder:{root}', str(tmp_path / 'store'),
                          prepare.Options(size=32, workers=0, limits=limits), progress=False)
  listed = image_folder.open_folder(root, ['train'], limits=limits).splits['train'][0]
  skipped = {line.split(':')[0] for line in store.splits['train']['skipped']}
  prepared = sorted(set(listed) - skipped)
  assert prepared == sorted(r['image'] for r in results) == [
      str(root / 'train' / 'a' / n) for n in ('0.jpg', '1.jpg', 'deep.png')]


def test_a_folder_holding_links_to_itself_is_classified_once(tmp_path):
  (tmp_path / 'photos').mkdir()
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'photos' / 'x.jpg')
  (tmp_path / 'photos' / 'self').symlink_to(tmp_path / 'photos')
  (tmp_path / 'photos' / 'again').symlink_to('.')
  paths, _ = finishes_within(30, classify.image_paths, [str(tmp_path / 'photos')])
  assert paths == [str(tmp_path / 'photos' / 'x.jpg')]
