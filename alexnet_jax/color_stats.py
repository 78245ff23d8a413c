"""The training set's mean pixel and RGB principal components, for mean subtraction and the
paper's PCA colour augmentation (section 4.1).

  python -m alexnet_jax.color_stats --config=configs/alexnet.py --workdir=/ckpt [--images=N]

computes them over N training images (all pixels of their training patches)
and stores them with the run in WORKDIR/color_stats.json. A run with
`--config.color_stats=computed` on that workdir then subtracts that mean and
draws its colour shifts along those components, on every restart too.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax.errors import ConfigError, UserFacingError

FILENAME = 'color_stats.json'


def compute(config, max_images: int) -> dict:
  """Mean RGB and the eigenvalues and eigenvectors (columns) of the RGB covariance."""
  data = input_pipeline.create(config, config.global_batch_size)
  count, total, outer, images = 0, np.zeros(3), np.zeros((3, 3)), 0
  for batch in data.train_batches(0):
    pixels = batch['image'][:max_images - images].reshape(-1, 3).astype(np.float64)
    count += len(pixels)
    total += pixels.sum(0)
    outer += pixels.T @ pixels
    images += len(batch['image'][:max_images - images])
    if images >= max_images or images >= data.train_examples:
      break
  mean = total / count
  covariance = outer / count - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(covariance)
  order = np.argsort(eigval)[::-1]
  # The paper's eigenvalues are those of pixels in [0, 1]; times 255, the colour shift
  # P (alpha * eigval) comes out in 0-255 pixel units (the convention of config.pca_eigval).
  eigval = eigval[order] / 255.0
  return {'mean_rgb': mean.tolist(), 'pca_eigval': eigval.tolist(),
          'pca_eigvec': eigvec[:, order].tolist(), 'images': images}


def save(stats: dict, workdir: str) -> str:
  path = epath.Path(workdir) / FILENAME
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(stats, indent=2))
  return str(path)


def resolve(config, workdir: str):
  """`config` itself, or with `color_stats=computed` a copy using WORKDIR's statistics."""
  if config.color_stats == 'config':
    return config
  if config.color_stats != 'computed':
    raise ConfigError(f"--config.color_stats={config.color_stats!r}: use 'config' or 'computed'.")
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    raise ConfigError(
        f'--config.color_stats=computed, but {path} does not exist: compute it once with\n'
        f'  python -m alexnet_jax.color_stats --config=<the same config> --workdir={workdir}')
  stats = json.loads(path.read_text())
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.mean_rgb = tuple(stats['mean_rgb'])
    resolved.pca_eigval = tuple(stats['pca_eigval'])
    resolved.pca_eigvec = tuple(tuple(row) for row in stats['pca_eigvec'])
  logging.info('Mean %s and PCA of %d training images from %s.',
               np.round(stats['mean_rgb'], 2).tolist(), stats['images'], path)
  return resolved


def main(argv):
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    stats = compute(config, flags.FLAGS.images)
  except UserFacingError as e:
    sys.exit(f'error: {e}')
  print(json.dumps(stats, indent=2))
  print(f'Written to {save(stats, workdir)}; train with --config.color_stats=computed '
        f'--workdir={os.path.normpath(workdir)} to use them.')


if __name__ == '__main__':
  # Flags only when run as a command: the trainer imports this module and has its own --config.
  config_flags.DEFINE_config_file('config', None, 'The training config.', lock_config=True)
  flags.DEFINE_string('workdir', None, "The run's workdir, where they are stored.")
  flags.DEFINE_integer('images', 10_000, 'How many training images to use.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
