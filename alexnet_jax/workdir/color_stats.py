"""A run's colour statistics: the training set's mean pixel, mean image and RGB principal
components, for mean subtraction and the paper's PCA colour augmentation (section 4.1).

`python -m alexnet_jax.commands.color_stats` computes them and `save` stores them with the
run: WORKDIR/color_stats.json (mean pixel, eigenvalues, eigenvectors) and
WORKDIR/mean_image.npy (the paper's mean image, [S, S, 3]). A run with
`--config.color_stats=computed` on that workdir then draws its colour shifts along those
components and subtracts that mean pixel, or with `--config.subtract_mean=image` the mean
image, on every restart too (`augmentation`).
"""

import io
import json

import numpy as np
from absl import logging
from etils import epath

from alexnet_jax import config_checks
from alexnet_jax.data import augment
from alexnet_jax.errors import ConfigError
from alexnet_jax.workdir import storage

FILENAME = 'color_stats.json'
MEAN_IMAGE = 'mean_image.npy'


def save(stats: dict, workdir: str) -> str:
  """Writes the statistics to the workdir; the path of the JSON file."""
  folder = epath.Path(workdir)
  folder.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.save(buffer, stats['mean_image'])
  # The mean image first: a run that finds the JSON file finds everything.
  storage.write_whole(folder / MEAN_IMAGE, buffer.getvalue())
  summary = {k: v for k, v in stats.items() if k != 'mean_image'}
  storage.write_whole(folder / FILENAME, json.dumps(summary, indent=2).encode())
  return str(folder / FILENAME)


def augmentation(config, workdir: str) -> augment.Augmentation:
  """The run's device augmentation: the config's colour statistics, or with
  `color_stats=computed` those stored in `workdir`."""
  config_checks.check_colour(config)
  if config.color_stats == 'config':
    return augment.from_config(config)
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    raise ConfigError(
        f'--config.color_stats=computed, but {path} does not exist: compute it once with\n'
        f'  python -m alexnet_jax.commands.color_stats --config=<the same config> --workdir={workdir}')
  stats = json.loads(path.read_text())
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.mean_rgb = tuple(stats['mean_rgb'])
    resolved.pca_eigval = tuple(stats['pca_eigval'])
    resolved.pca_eigvec = tuple(tuple(row) for row in stats['pca_eigvec'])
  mean_image = None
  if config.subtract_mean == 'image':
    if not (epath.Path(workdir) / MEAN_IMAGE).exists():   # statistics of an older version
      raise ConfigError(
          f'--config.subtract_mean=image, but {workdir} has no {MEAN_IMAGE}: compute the '
          f'statistics again with\n  python -m alexnet_jax.commands.color_stats --config=<the same '
          f'config> --workdir={workdir}')
    mean_image = np.load(io.BytesIO((epath.Path(workdir) / MEAN_IMAGE).read_bytes()))
    if mean_image.shape != (config.resize_size, config.resize_size, 3):
      raise ConfigError(f'The mean image in {workdir} is {mean_image.shape[0]}x'
                        f'{mean_image.shape[1]}, the stored images {config.resize_size}x'
                        f'{config.resize_size}: compute the statistics again.')
  logging.info('Mean %s%s and PCA of %d training images from %s.',
               np.round(stats['mean_rgb'], 2).tolist(),
               ' (subtracting the mean image)' if mean_image is not None else '',
               stats['images'], path)
  return augment.from_config(resolved, mean_image)
