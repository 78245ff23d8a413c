"""The TFDS pipeline on mock ImageNet and the synthetic source."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax import errors, input_pipeline, preprocessing
from tests.conftest import tiny_config


def _mock_config():
  config = tiny_config('paper')
  config.dataset = 'imagenet2012'
  return config


def test_train_batches_are_a_function_of_the_step():
  config = _mock_config()
  with tfds.testing.mock_data(num_examples=20):
    data = input_pipeline.create(config, global_batch_size=4)
    assert data.num_classes == 1000 and data.train_examples == 20
    stream = data.train_batches(0)
    first_seven = [next(stream) for _ in range(7)]   # crosses the epoch boundary at step 5
    resumed = data.train_batches(3)
    for expected in first_seven[3:]:
      got = next(resumed)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
  batch = first_seven[0]
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['rgb_shift'].shape == (4, 3)
  # Another epoch is another order: the stream does not repeat itself.
  assert not np.array_equal(first_seven[0]['image'], first_seven[5]['image'])


def test_eval_pass_counts_each_example_once_with_padding_masked():
  config = _mock_config()
  with tfds.testing.mock_data(num_examples=7):
    data = input_pipeline.create(config, global_batch_size=4)
    batches = list(data.eval_batches())
  assert data.eval_examples == 7 and data.eval_steps == len(batches) == 2
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0])


def _jpeg(array) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='JPEG', quality=95)
  return out.getvalue()


def _smooth_image(height, width):
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  rgb = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 23),
                  128 + 60 * np.sin((xx + yy) / 51)], -1)
  return rgb.astype(np.uint8)


@pytest.mark.parametrize('height, width', [(300, 450), (500, 333)])
def test_eval_crop_is_the_papers_resize_then_centre_crop(height, width):
  """Decoding only the window equals Pillow resizing the shorter side to 256, then cropping 224."""
  config = tiny_config('paper')
  config.image_size, config.resize_size = 224, 256
  image = _smooth_image(height, width)
  ours = preprocessing.eval_example({'image': tf.constant(_jpeg(image)), 'label': 3}, config)
  decoded = np.asarray(Image.open(io.BytesIO(_jpeg(image))).convert('RGB'))
  scale = 256 / min(height, width)
  resized = Image.fromarray(decoded).resize(
      (round(width * scale), round(height * scale)), Image.BILINEAR)
  left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
  reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
  difference = np.abs(ours['image'].numpy().astype(np.float32) - reference)
  assert ours['image'].shape == (224, 224, 3)
  assert difference.mean() < 2.0, difference.mean()


def test_ten_crops_are_the_papers_corners_centre_and_reflections():
  """Against Pillow: the centre square resized to 256, its four corner and centre 224 patches,
  then each reflected."""
  config = tiny_config('paper')
  config.image_size, config.resize_size = 224, 256
  image = _smooth_image(300, 450)
  ours = preprocessing.ten_crop_example({'image': tf.constant(_jpeg(image)), 'label': 3}, config)
  decoded = Image.open(io.BytesIO(_jpeg(image))).convert('RGB')
  square = decoded.crop((75, 0, 375, 300)).resize((256, 256), Image.BILINEAR)
  boxes = [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]   # (left, top)
  patches = [np.asarray(square.crop((x, y, x + 224, y + 224)), np.float32) for x, y in boxes]
  reference = np.stack(patches + [p[:, ::-1] for p in patches])
  got = ours['image'].numpy().astype(np.float32)
  assert got.shape == (10, 224, 224, 3)
  for i in range(10):
    assert np.abs(got[i] - reference[i]).mean() < 2.0, i
  # The patches differ from each other: a mix-up of corners would not pass the line above.
  assert np.abs(reference[0] - reference[3]).mean() > 10


def test_cmyk_jpeg_becomes_the_same_rgb_as_pillow_gives():
  config = tiny_config('paper')
  rgb = np.zeros((80, 100, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, 30
  cmyk = io.BytesIO()
  Image.fromarray(rgb).convert('CMYK').save(cmyk, format='JPEG', quality=95)
  ours = preprocessing.eval_example({'image': tf.constant(cmyk.getvalue()), 'label': 0}, config)
  reference = np.asarray(Image.open(io.BytesIO(cmyk.getvalue())).convert('RGB'), np.float32)
  np.testing.assert_allclose(ours['image'].numpy().reshape(-1, 3).mean(0),
                             reference.reshape(-1, 3).mean(0), atol=2)


def test_png_images_are_decoded_too():
  config = tiny_config('paper')
  image = _smooth_image(90, 120)
  png = io.BytesIO()
  Image.fromarray(image).save(png, format='PNG')
  ours = preprocessing.eval_example({'image': tf.constant(png.getvalue()), 'label': 0}, config)
  assert ours['image'].shape == (64, 64, 3)


def test_missing_imagenet_says_how_to_prepare_it(tmp_path):
  config = _mock_config()
  config.data_dir = str(tmp_path)
  with pytest.raises(errors.DataError) as raised:
    input_pipeline.create(config, global_batch_size=4)
  message = str(raised.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'tfds build imagenet2012' in message


def test_unknown_dataset_is_named():
  config = _mock_config()
  config.dataset = 'no_such_dataset'
  with pytest.raises(errors.DataError, match='no_such_dataset'):
    input_pipeline.create(config, global_batch_size=4)


def test_synthetic_classes_differ_and_batches_repeat_by_step():
  config = tiny_config()
  data = input_pipeline.create(config, global_batch_size=8)
  a = next(data.train_batches(5))
  b = next(data.train_batches(5))
  np.testing.assert_array_equal(a['image'], b['image'])
  # A nearest-class-mean classifier on the gratings' contrast per colour channel
  # already beats chance (10%) by far: the classes carry signal a network can learn.
  from alexnet_jax import synthetic_data
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 20)
  images = synthetic_data.make_images(rng, labels, 64, 10).astype(np.float32)
  colour = images.std(axis=(1, 2))
  means = np.stack([colour[labels == c].mean(0) for c in range(10)])
  test_labels = np.arange(10).repeat(5)
  test = synthetic_data.make_images(rng, test_labels, 64, 10).astype(np.float32).std((1, 2))
  predicted = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (predicted == test_labels).mean() > 0.3
  eval_batches = list(data.eval_batches())
  assert sum(float(b['mask'].sum()) for b in eval_batches) == config.synthetic.eval_examples
