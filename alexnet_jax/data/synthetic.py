"""A learnable synthetic image set, generated in NumPy: the offline demo's data.

Class c is a noisy sinusoidal grating at orientation 180 * c / C degrees,
tinted with the class's colour, at a random frequency, phase and brightness:
a network has to find oriented edges and colour, as on real images, to tell
the classes apart. Every example is a function of its split and index alone:
the same whichever host or worker makes it, and whatever the run's seed, so
runs of different seeds train and evaluate on the same images.
"""

import numpy as np

from alexnet_jax.data import image_source

TRAIN, EVAL = 0, 1


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
  theta = (np.pi * labels / num_classes + rng.normal(0, 0.04, n)).astype(np.float32)
  freq = rng.uniform(3.0, 6.0, n).astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
  along = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
  grating = np.sin(2 * np.pi * freq[:, None, None] * along + phase[:, None, None])
  colour = _class_colours(num_classes)[labels].astype(np.float32)
  brightness = rng.uniform(90, 160, n).astype(np.float32)
  images = (brightness[:, None, None, None]
            + 70 * grating[..., None] * colour[:, None, None, :]
            + 25 * rng.standard_normal((n, size, size, 3), dtype=np.float32))
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


class SyntheticSplit(image_source.ImageSource):
  """`examples` generated images, by index.

  Example i is of class i mod `num_classes`. Images are made a block of
  `BLOCK` at a time, from a generator seeded by (split, block), and kept: after
  the first epoch the demo reads them as it would read a store.
  """
  BLOCK = 256

  def __init__(self, split: int, examples: int, size: int, num_classes: int):
    self._split, self._examples = split, examples
    self.image_size, self._num_classes = size, num_classes
    self._blocks = {}

  def __len__(self):
    return self._examples

  def _block(self, block: int) -> np.ndarray:
    if block not in self._blocks:
      first = block * self.BLOCK
      labels = np.arange(first, min(first + self.BLOCK, self._examples)) % self._num_classes
      self._blocks[block] = make_images(np.random.default_rng([self._split, block]), labels,
                                        self.image_size, self._num_classes)
    return self._blocks[block]

  def read_into(self, index, out):
    block, offset = divmod(int(index), self.BLOCK)
    out[...] = self._block(block)[offset]
    return index % self._num_classes
