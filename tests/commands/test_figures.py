"""The paper's figures from a trained workdir, and the nearest-neighbour search they use."""

import glob
import os
import types

import jax
import numpy as np
from PIL import Image

from alexnet_jax import models, train
from alexnet_jax.commands import figures
from alexnet_jax.data import augment
from tests.conftest import tiny_config


def test_nearest_rows_by_euclidean_distance():
  pool = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
  queries = np.array([[0.2, 0.1], [9.0, 0.5]])
  np.testing.assert_array_equal(figures.nearest(queries, pool, k=3), [[0, 2, 3], [1, 2, 0]])


def test_kernel_grid_places_each_kernel_scaled_to_unit_range():
  kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 5)).astype(np.float32)
  grid = figures.kernel_grid(kernel, columns=2)
  assert grid.shape == (3 * 4 + 1, 2 * 4 + 1, 3)
  last = grid[9:12, 1:4]   # kernel 4: row 2, column 0
  expected = (kernel[..., 4] - kernel[..., 4].min()) / np.ptp(kernel[..., 4])
  np.testing.assert_allclose(last, expected, rtol=1e-6)


def test_figures_of_a_trained_workdir(tmp_path):
  config = tiny_config()
  config.num_train_steps, config.eval_every_steps = 2, 2
  workdir = str(tmp_path / 'work')
  train.train_and_evaluate(config, workdir)
  paths = figures.make_figures(config, workdir, 'latest', str(tmp_path / 'figures'),
                               num_images=3, pool_size=16)
  assert sorted(paths) == ['conv1_kernels', 'neighbours', 'top5']
  for path in paths.values():
    with Image.open(path) as image:
      assert image.format == 'PNG' and min(image.size) > 100
  events = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert events and max(os.path.getsize(e) for e in events) > 10_000   # the images went in


def test_the_features_are_fc7_after_its_relu_and_the_probabilities_the_softmax():
  """The paper's neighbours use "the last, 4096-dimensional hidden layer": fc7 after its
  ReLU, computed here by hand from fc6's output and fc7's weights."""
  model = models.AlexNet(num_classes=10, variant='owt', width=0.125)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
  aug = augment.Augmentation(image_size=64, mean=np.full(3, 120, np.float32),
                             std=np.ones(3, np.float32))
  patches = np.asarray(images[:, 4:68, 4:68], np.float32) - 120
  params = jax.device_get(model.init(jax.random.key(0), patches, train=False)['params'])
  features, probs = figures._forward(model, aug)(params, images)
  logits, state = model.apply({'params': params}, patches, train=False,
                              capture_intermediates=lambda m, _: m.name == 'fc6')
  fc6 = np.maximum(np.asarray(state['intermediates']['fc6']['__call__'][0]), 0)
  np.testing.assert_allclose(
      features, np.maximum(fc6 @ params['fc7']['kernel'] + params['fc7']['bias'], 0),
      rtol=1e-5, atol=1e-6)
  assert (features == 0).any() and (features > 0).any()
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), rtol=1e-5)


def test_the_queries_are_one_image_per_class_before_any_class_twice():
  """Folders come sorted by class: the first images would all be of one."""
  def batch(labels, mask):
    return types.SimpleNamespace(image=np.arange(len(labels))[:, None] + 10 * np.array(
        labels)[:, None], label=np.array(labels), mask=np.array(mask))
  batches = [batch([0, 0, 1], [1, 1, 1]), batch([1, 2, 3], [1, 0, 1])]
  images, labels = figures._one_per_class(iter(batches), 4)
  np.testing.assert_array_equal(labels, [0, 1, 3, 0])   # class 2's row is padding
  np.testing.assert_array_equal(images[:, 0], [0, 12, 32, 1])
