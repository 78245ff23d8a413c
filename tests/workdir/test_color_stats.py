"""The training set's mean pixel, mean image and RGB principal components, stored with the run
and used."""

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import errors, train
from alexnet_jax.commands import color_stats as compute_color_stats
from alexnet_jax.workdir import color_stats
from tests.conftest import tiny_config

COLOURS = {'a': (200, 100, 50), 'b': (100, 50, 150)}


@pytest.fixture
def two_colour_folder(tmp_path):
  """Half the images one flat colour, half another: mean and covariance known by hand."""
  for split, count in (('train', 8), ('val', 2)):
    for name, colour in COLOURS.items():
      (tmp_path / split / name).mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (80 + 7 * i, 70), colour).save(tmp_path / split / name / f'{i}.png')
  config = tiny_config()
  config.dataset = f'image_folder:{tmp_path}'
  config.global_batch_size = 4
  return config


def test_two_colour_set_gives_the_hand_computed_mean_and_components(two_colour_folder):
  stats = compute_color_stats.compute(two_colour_folder, max_images=16)
  assert stats['images'] == 16
  np.testing.assert_allclose(stats['mean_rgb'], [150, 75, 100], atol=1e-6)
  # The two colours are mean +- d/2, d = (100, 50, -100), |d| = 150: one component of variance
  # (150 / 2)^2 along d, none across it; in [0, 1] units times 255, 75^2 / 255.
  np.testing.assert_allclose(stats['pca_eigval'], [75**2 / 255, 0, 0], atol=1e-6)
  top = np.asarray(stats['pca_eigvec'])[:, 0]
  np.testing.assert_allclose(np.abs(top), [2 / 3, 1 / 3, 2 / 3], atol=1e-6)
  assert top[0] * top[2] < 0
  # The mean image of the stored 73x73 squares: the mean pixel everywhere.
  assert stats['mean_image'].shape == (73, 73, 3)
  np.testing.assert_allclose(stats['mean_image'], np.broadcast_to([150, 75, 100], (73, 73, 3)),
                             atol=1e-4)


def test_more_images_asked_for_than_an_epoch_holds_counts_each_image_once(two_colour_folder):
  two_colour_folder.global_batch_size = 3   # 16 images: 5 batches, one image left over
  stats = compute_color_stats.compute(two_colour_folder, max_images=1000)
  assert stats['images'] == 15   # not 16 or more, which the next epoch's reshuffle would add


def test_computed_statistics_are_required_then_read_from_the_workdir_for_the_run(two_colour_folder, tmp_path):
  config = two_colour_folder
  config.color_stats = 'computed'
  config.num_train_steps, config.eval_every_steps = 2, 2
  workdir = str(tmp_path / 'work')
  with pytest.raises(errors.ConfigError, match='python -m alexnet_jax.commands.color_stats'):
    train.train_and_evaluate(config, workdir)
  color_stats.save(compute_color_stats.compute(config, max_images=16), workdir)
  aug = color_stats.augmentation(config, workdir)
  np.testing.assert_allclose(aug.mean, [150, 75, 100], atol=1e-6)
  assert aug.pca_eigval[0] == pytest.approx(75**2 / 255, rel=1e-6)
  assert tuple(config.mean_rgb) != tuple(aug.mean)   # the caller's config is untouched
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics['examples'] == 4
  config.subtract_mean, config.num_train_steps = 'image', 4
  assert color_stats.augmentation(config, workdir).mean.shape == (73, 73, 3)
  assert train.train_and_evaluate(config, workdir)['examples'] == 4


def test_the_mean_image_needs_computed_statistics(two_colour_folder, tmp_path):
  two_colour_folder.subtract_mean = 'image'
  with pytest.raises(errors.ConfigError, match='needs the mean image'):
    train.train_and_evaluate(two_colour_folder, str(tmp_path))
