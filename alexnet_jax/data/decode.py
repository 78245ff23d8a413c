"""Encoded image -> the paper's input image: RGB, shorter side resized to `size`, then the
centre `size` x `size` square (section 2 of the paper), as uint8 [size, size, 3].

JPEG goes through libjpeg-turbo (simplejpeg), which can decode at 1/2, 1/4 or 1/8 of
the full size for the price of a smaller image: a full-size photo resized to 256 is
decoded at the smallest such scale that still covers 256. An image stored already at
`size` x `size` (a prepared store) is only decoded. Everything else (PNG, GIF, BMP,
CMYK JPEGs) goes through Pillow. Grayscale, palette, CMYK and alpha become RGB.
"""

import io
import math

import numpy as np
import simplejpeg
from PIL import Image


class UndecodableImage(ValueError):
  """The bytes are not an image this module can read."""


def square(encoded: bytes, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the centre square of the image with its shorter side at `size`."""
  image = _decode_jpeg(encoded, size) if encoded[:2] == b'\xff\xd8' else None
  if image is None:
    image = _decode_other(encoded, size)
  height, width = image.shape[:2]
  if (height, width) == (size, size):
    return image
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  # Resizing only the centre square's box is resizing the whole image and then cropping.
  # Pillow's bilinear filter widens with the scale when it shrinks (antialiasing).
  resized = Image.fromarray(image).resize((size, size), Image.BILINEAR,
                                          box=(left, top, left + side, top + side))
  return np.asarray(resized)


def _decode_jpeg(encoded: bytes, size: int) -> np.ndarray | None:
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(encoded)
    side = min(height, width)
    # The smallest DCT scale whose shorter side still covers `size`.
    return simplejpeg.decode_jpeg(encoded, colorspace='RGB',
                                  min_height=math.ceil(size * height / side),
                                  min_width=math.ceil(size * width / side))
  except ValueError:
    return None   # CMYK, lossless or damaged JPEG: Pillow says which.


def _decode_other(encoded: bytes, size: int) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(encoded)) as image:
      if image.format == 'JPEG':
        image.draft('RGB', (size, size))
      return np.asarray(image.convert('RGB'))
  except Image.UnidentifiedImageError as e:
    raise UndecodableImage('not an image in a format Pillow reads') from e
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UndecodableImage(f'{type(e).__name__}: {e}') from e
