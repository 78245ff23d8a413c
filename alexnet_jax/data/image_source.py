"""What the loader reads: a split's square uint8 images by index, and the slice of a source
that is a split. Stores, folders and generated images are sources."""

import abc
import dataclasses

import numpy as np


class ImageSource(abc.ABC):
  """A split's square uint8 images by index, each decoded into an array it is given."""
  image_size: int
  stores_jpegs = False   # whether `jpeg` gives every image's stored JPEG

  @abc.abstractmethod
  def __len__(self) -> int:
    ...

  @abc.abstractmethod
  def read_into(self, index: int, out: np.ndarray) -> int:
    """Writes image `index` into `out` (uint8 [S, S, 3]) and returns its label."""

  def jpeg(self, index: int) -> tuple[int, memoryview] | None:
    """(label, the stored JPEG of image `index`, already `image_size` square) where the source
    keeps one, for a device to decode; None where only the host can decode it."""
    del index
    return None

  def __getitem__(self, index: int) -> dict:
    image = np.empty((self.image_size, self.image_size, 3), np.uint8)
    return {'image': image, 'label': np.int32(self.read_into(int(index), image))}


@dataclasses.dataclass(frozen=True)
class Split:
  """An image source and the slice [start, stop) of it that is the split."""
  source: ImageSource
  start: int
  stop: int

  @property
  def examples(self) -> int:
    return self.stop - self.start
