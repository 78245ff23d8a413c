"""The training set's mean pixel, mean image and RGB principal components, for mean
subtraction and the paper's PCA colour augmentation (section 4.1).

  python -m alexnet_jax.color_stats --config=configs/alexnet.py --workdir=/ckpt [--images=N]

computes them over N training images as the trainer reads them (the stored
S x S squares, before any patch is cut) and stores them with the run:
WORKDIR/color_stats.json (mean pixel, eigenvalues, eigenvectors) and
WORKDIR/mean_image.npy (the paper's mean image, [S, S, 3]). A run with
`--config.color_stats=computed` on that workdir then draws its colour shifts
along those components and subtracts that mean pixel, or with
`--config.subtract_mean=image` the mean image, on every restart too.
"""

import io
import json
import sys

import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from alexnet_jax import checkpointing, data, parallel
from alexnet_jax.data import augment
from alexnet_jax.errors import ConfigError, UserFacingError

FILENAME = 'color_stats.json'
MEAN_IMAGE = 'mean_image.npy'


def compute(config, max_images: int) -> dict:
  """Mean RGB, the eigenvalues and eigenvectors (columns) of the RGB covariance, and the
  mean image."""
  parallel.one_host_only('python -m alexnet_jax.color_stats')
  dataset = data.create(config, config.global_batch_size)
  count, total, outer, images = 0, np.zeros(3), np.zeros((3, 3)), 0
  image_sum = np.zeros((dataset.image_size, dataset.image_size, 3))
  # One epoch at most: the stream's next epoch would count images a second time.
  limit = min(max_images, dataset.steps_per_epoch * config.global_batch_size)
  batches = dataset.train_batches(0)
  try:
    for batch in batches:
      taken = batch['image'][:limit - images].astype(np.float64)
      pixels = taken.reshape(-1, 3)
      count += len(pixels)
      total += pixels.sum(0)
      outer += pixels.T @ pixels
      image_sum += taken.sum(0)
      images += len(taken)
      if images >= limit:
        break
  finally:
    batches.close()
  mean = total / count
  covariance = outer / count - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(covariance)
  order = np.argsort(eigval)[::-1]
  # The paper's eigenvalues are those of pixels in [0, 1]; times 255, the colour shift
  # P (alpha * eigval) comes out in 0-255 pixel units (the convention of config.pca_eigval).
  eigval = eigval[order] / 255.0
  return {'mean_rgb': mean.tolist(), 'pca_eigval': eigval.tolist(),
          'pca_eigvec': eigvec[:, order].tolist(), 'images': images,
          'mean_image': (image_sum / images).astype(np.float32)}


def save(stats: dict, workdir: str) -> str:
  """Writes the statistics to the workdir; the path of the JSON file."""
  folder = epath.Path(workdir)
  folder.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.save(buffer, stats['mean_image'])
  # The mean image first: a run that finds the JSON file finds everything.
  checkpointing.write_whole(folder / MEAN_IMAGE, buffer.getvalue())
  summary = {k: v for k, v in stats.items() if k != 'mean_image'}
  checkpointing.write_whole(folder / FILENAME, json.dumps(summary, indent=2).encode())
  return str(folder / FILENAME)


def augmentation(config, workdir: str) -> augment.Augmentation:
  """The run's device augmentation: the config's colour statistics, or with
  `color_stats=computed` those stored in `workdir`."""
  if config.color_stats not in ('config', 'computed'):
    raise ConfigError(f"--config.color_stats={config.color_stats!r}: use 'config' or "
                      "'computed'.")
  if config.subtract_mean not in ('pixel', 'image'):
    raise ConfigError(f"--config.subtract_mean={config.subtract_mean!r}: use 'pixel' or "
                      "'image'.")
  if config.color_stats == 'config':
    if config.subtract_mean == 'image':
      raise ConfigError('--config.subtract_mean=image needs the mean image of the training '
                        'set: compute it once with\n'
                        f'  python -m alexnet_jax.color_stats --config=<the same config> '
                        f'--workdir={workdir}\nand train with --config.color_stats=computed.')
    return augment.from_config(config)
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
  mean_image = None
  if config.subtract_mean == 'image':
    if not (epath.Path(workdir) / MEAN_IMAGE).exists():   # statistics of an older version
      raise ConfigError(
          f'--config.subtract_mean=image, but {workdir} has no {MEAN_IMAGE}: compute the '
          f'statistics again with\n  python -m alexnet_jax.color_stats --config=<the same '
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


def main(argv):
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    stats = compute(config, flags.FLAGS.images)
  except UserFacingError as e:
    sys.exit(f'error: {e}')
  print(json.dumps({k: v for k, v in stats.items() if k != 'mean_image'}, indent=2))
  print(f'Written to {save(stats, workdir)}; train with --config.color_stats=computed '
        f'--workdir={workdir} to use them (and --config.subtract_mean=image '
        'for the mean image).')


if __name__ == '__main__':
  # Flags only when run as a command: the trainer imports this module and has its own --config.
  config_flags.DEFINE_config_file('config', None, 'The training config.', lock_config=True)
  flags.DEFINE_string('workdir', None, "The run's workdir, where they are stored.")
  flags.DEFINE_integer('images', 10_000, 'How many training images to use.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
