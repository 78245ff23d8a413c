"""Encoded image -> the paper's input image: RGB, shorter side resized to `size`, then the
centre `size` x `size` square (section 2 of the paper), as uint8 [size, size, 3].

The formats read are those of FORMATS, told by the bytes' content, not by a file's name:
the one definition every reader (prepare, training on a folder, classify) shares. An
image of more than `max_pixels` is refused from its header, before it is decoded. JPEG
goes through libjpeg-turbo (simplejpeg), which can decode at 1/2, 1/4 or 1/8 of the full
size for the price of a smaller image: a full-size photo resized to 256 is decoded at the
smallest such scale that still covers 256; a JPEG cut short is refused (libjpeg would fill
its missing part with grey). An image stored already at `size` x `size` (a prepared store)
is only decoded. Everything else (PNG, GIF, BMP, CMYK JPEGs) goes through Pillow.
Grayscale, palette, CMYK and alpha become RGB; 16-bit samples are scaled to 8 bits.
"""

import io
import math
import warnings

import numpy as np
import simplejpeg
from PIL import Image

# Pillow's name of each format read -> how its files begin.
FORMATS = {'JPEG': (b'\xff\xd8',), 'PNG': (b'\x89PNG\r\n\x1a\n',), 'GIF': (b'GIF87a', b'GIF89a'),
           'BMP': (b'BM',)}
FORMAT_NAMES = 'a JPEG, PNG, GIF or BMP file'
# 64 megapixels (8192x8192): a photo of a 100-megapixel camera is refused, not decoded into
# gigabytes; Pillow's own limit (179 megapixels) lets a 13000x13000 image take 2.5 GB.
MAX_PIXELS = 2**26
# Pillow's modes of 16-bit grayscale, which its convert('RGB') clips at 255.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


class UndecodableImage(ValueError):
  """The bytes are not an image this module reads."""


def format_of(encoded: bytes) -> str | None:
  """The name in FORMATS of the image `encoded` begins as, or None."""
  for name, starts in FORMATS.items():
    if encoded.startswith(starts):
      return name
  return None


def square(encoded: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """uint8 [size, size, 3]: the centre square of the image with its shorter side at `size`."""
  image_format = format_of(encoded)
  if image_format is None:
    raise UndecodableImage(f'not {FORMAT_NAMES}')
  image = _decode_jpeg(encoded, size, max_pixels) if image_format == 'JPEG' else None
  if image is None:
    image = _decode_other(encoded, image_format, size, max_pixels)
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


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
  if width * height > max_pixels:
    raise UndecodableImage(f'{width}x{height} pixels, over the cap of {max_pixels:,} pixels an '
                           'image may have (prepare and classify take --max_image_pixels)')


def _decode_jpeg(encoded: bytes, size: int, max_pixels: int) -> np.ndarray | None:
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(encoded)
  except ValueError:
    return None   # CMYK, lossless or damaged JPEG: Pillow says which.
  _check_pixels(width, height, max_pixels)
  side = min(height, width)
  try:
    # The smallest DCT scale whose shorter side still covers `size`.
    return simplejpeg.decode_jpeg(encoded, colorspace='RGB',
                                  min_height=math.ceil(size * height / side),
                                  min_width=math.ceil(size * width / side))
  except ValueError as e:
    # libjpeg's warning for missing data; Pillow would decode the rest as grey. Other
    # warnings (a few extraneous bytes, common in real photos) are Pillow's to judge.
    if 'premature end' in str(e).lower():
      raise UndecodableImage(f'a JPEG cut short ({e})') from e
    return None


def _decode_other(encoded: bytes, image_format: str, size: int, max_pixels: int) -> np.ndarray:
  try:
    with warnings.catch_warnings():
      # Pillow warns of images over its own limit when it opens them; max_pixels rules here.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(encoded), formats=[image_format])
    with image:
      _check_pixels(*image.size, max_pixels)   # from the header: nothing decoded yet
      if image.format == 'JPEG':
        image.draft('RGB', (size, size))
      if image.mode in _SIXTEEN_BIT_MODES:
        # Its high byte, as Pillow itself reduces 16-bit RGB, rather than clipping at 255.
        image = Image.fromarray((np.asarray(image).astype(np.uint32).clip(0, 65535) >> 8)
                                .astype(np.uint8))
      return np.asarray(image.convert('RGB'))
  except UndecodableImage:
    raise
  except Image.UnidentifiedImageError as e:
    raise UndecodableImage(f'not {FORMAT_NAMES} that Pillow reads') from e
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UndecodableImage(f'{type(e).__name__}: {e}') from e
