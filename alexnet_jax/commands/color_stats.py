"""`python -m alexnet_jax.commands.color_stats --config=configs/alexnet.py --workdir=/ckpt
[--images=N]`: the training set's mean pixel, mean image and RGB principal components.

Computes them over N training images as the trainer reads them (the stored S x S squares,
before any patch is cut) and stores them with the run (`alexnet_jax/commands/color_stats.py`),
where `--config.color_stats=computed` finds them.
"""

import json
import sys

import numpy as np
from absl import flags

from alexnet_jax import command_line, data
from alexnet_jax.errors import UserFacingError
from alexnet_jax.parallel import distributed
from alexnet_jax.workdir import color_stats


def compute(config, max_images: int) -> dict:
  """Mean RGB, the eigenvalues and eigenvectors (columns) of the RGB covariance, and the
  mean image."""
  distributed.one_host_only('python -m alexnet_jax.commands.color_stats')
  dataset = data.create(config, config.global_batch_size)
  count, total, outer, images = 0, np.zeros(3), np.zeros((3, 3)), 0
  image_sum = np.zeros((dataset.image_size, dataset.image_size, 3))
  # One epoch at most: the stream's next epoch would count images a second time.
  limit = min(max_images, dataset.steps_per_epoch * config.global_batch_size)
  batches = dataset.train_batches(0)
  try:
    for batch in batches:
      taken = batch.image[:limit - images].astype(np.float64)
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


def main(argv):
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    stats = compute(config, flags.FLAGS.images)
  except UserFacingError as e:
    sys.exit(f'error: {e}')
  print(json.dumps({k: v for k, v in stats.items() if k != 'mean_image'}, indent=2))
  print(f'Written to {color_stats.save(stats, workdir)}; train with --config.color_stats=computed '
        f'--workdir={workdir} to use them (and --config.subtract_mean=image '
        'for the mean image).')


if __name__ == '__main__':
  command_line.define_config_flag('The training config.')
  flags.DEFINE_string('workdir', None, "The run's workdir, where they are stored.")
  flags.DEFINE_integer('images', 10_000, 'How many training images to use.')
  flags.mark_flags_as_required(['config', 'workdir'])
  command_line.run(main)
