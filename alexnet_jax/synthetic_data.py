"""A learnable synthetic image set, generated in NumPy: the offline demo's data.

Class c is a noisy sinusoidal grating at orientation 180 * c / C degrees,
tinted with the class's colour, at a random frequency, phase and brightness:
a network has to find oriented edges and colour, as on real images, to tell
the classes apart. Every example is a function of the seed and its place in
the stream, so a resumed run, or one on another number of hosts, sees the
same examples. No TensorFlow is needed.
"""

import itertools
import math

import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax.errors import DataError

_TRAIN, _EVAL = 0, 1


def _class_colours(num_classes: int) -> np.ndarray:
  hues = np.arange(num_classes) / num_classes
  # Hue -> RGB on the colour wheel, kept away from grey so each tint is distinct.
  return 0.5 + 0.5 * np.cos(2 * np.pi * (hues[:, None] - np.array([0, 1 / 3, 2 / 3])))


def make_images(rng: np.random.Generator, labels: np.ndarray, size: int,
                num_classes: int) -> np.ndarray:
  """uint8 [len(labels), size, size, 3] images of the given classes."""
  n = len(labels)
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
  yy, xx = np.meshgrid(coords, coords, indexing='ij')
  theta = np.pi * labels / num_classes + rng.normal(0, 0.04, n)
  freq = rng.uniform(3.0, 6.0, n)
  phase = rng.uniform(0, 2 * np.pi, n)
  along = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
  grating = np.sin(2 * np.pi * freq[:, None, None] * along + phase[:, None, None])
  colour = _class_colours(num_classes)[labels]
  brightness = rng.uniform(90, 160, n)
  images = (brightness[:, None, None, None]
            + 70 * grating[..., None] * colour[:, None, None, :]
            + rng.normal(0, 25, (n, size, size, 3)))
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def create(config, host_batch: int, process_index: int, process_count: int):
  num_classes, size = config.synthetic.num_classes, config.image_size
  train_examples, eval_examples = config.synthetic.train_examples, config.synthetic.eval_examples
  if train_examples < host_batch * process_count:
    raise DataError(
        f'config.synthetic.train_examples={train_examples} is smaller than one global batch.')
  # Hosts take consecutive blocks of the validation examples.
  host_start = eval_examples * process_index // process_count
  host_stop = eval_examples * (process_index + 1) // process_count
  eval_steps = math.ceil(math.ceil(eval_examples / process_count) / host_batch)

  def train_batches(start_step: int):
    # Row r of the global batch of step s depends on (seed, s, r) alone: any
    # split between hosts gives the same global batch.
    first_row = process_index * host_batch
    for step in itertools.count(start_step):
      rngs = [np.random.default_rng([config.seed, _TRAIN, step, row])
              for row in range(first_row, first_row + host_batch)]
      labels = np.array([rng.integers(0, num_classes) for rng in rngs], np.int32)
      images = np.concatenate([make_images(rng, labels[i:i + 1], size, num_classes)
                               for i, rng in enumerate(rngs)])
      yield {'image': images, 'label': labels}

  def eval_batches():
    for i in range(eval_steps):
      start = host_start + i * host_batch
      count = max(0, min(host_batch, host_stop - start))
      # Example k of the validation set depends on (seed, k) alone, whatever the host count.
      indices = np.arange(start, start + host_batch)
      labels = (indices % num_classes).astype(np.int32)
      images = np.concatenate([
          make_images(np.random.default_rng([config.seed, _EVAL, k]), labels[j:j + 1], size,
                      num_classes) for j, k in enumerate(indices)])
      mask = (np.arange(host_batch) < count).astype(np.float32)
      yield {'image': images, 'label': labels, 'mask': mask}

  return input_pipeline.Data(
      num_classes=num_classes, train_examples=train_examples, eval_examples=eval_examples,
      eval_steps=eval_steps,
      train_batches=train_batches, eval_batches=eval_batches)
