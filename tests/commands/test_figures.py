"""The paper's figures from a trained workdir, and the nearest-neighbour search they use."""

import glob
import os

import numpy as np
from PIL import Image

from alexnet_jax import train
from alexnet_jax.commands import figures
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
