"""Encoded images -> the paper's square, against Pillow."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.data import decode


def _smooth_image(height, width):
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  rgb = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 23),
                  128 + 60 * np.sin((xx + yy) / 51)], -1)
  return rgb.astype(np.uint8)


def _encode(array, fmt='JPEG', mode=None, **kwargs) -> bytes:
  out = io.BytesIO()
  image = Image.fromarray(array)
  (image.convert(mode) if mode else image).save(out, format=fmt, **kwargs)
  return out.getvalue()


def _pillow_square(encoded: bytes, size: int) -> np.ndarray:
  """The paper's preprocessing written with Pillow: shorter side to `size`, centre crop."""
  image = Image.open(io.BytesIO(encoded)).convert('RGB')
  scale = size / min(image.size)
  image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
  left, top = (image.width - size) // 2, (image.height - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.float32)


@pytest.mark.parametrize('height, width', [(300, 450), (500, 333), (1024, 1536)])
def test_square_is_the_shorter_side_resized_then_the_centre(height, width):
  encoded = _encode(_smooth_image(height, width), quality=95)
  ours = decode.square(encoded, 256)
  assert ours.shape == (256, 256, 3) and ours.dtype == np.uint8
  # 1024x1536 is decoded by libjpeg-turbo at a quarter of its size: still within a level.
  # (Pillow's own crop one pixel off differs from it by 1.2 to 1.8 on average.)
  difference = np.abs(ours.astype(np.float32) - _pillow_square(encoded, 256))
  assert difference.mean() < 1.0, difference.mean()


def test_an_image_already_at_the_size_is_only_decoded():
  image = _smooth_image(64, 64)
  encoded = _encode(image, quality=95)
  np.testing.assert_array_equal(decode.square(encoded, 64),
                                np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB')))


def test_cmyk_jpeg_becomes_the_colour_it_was_made_from():
  rgb = np.zeros((80, 100, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, 30
  encoded = _encode(rgb, mode='CMYK', quality=95)
  np.testing.assert_allclose(decode.square(encoded, 64).reshape(-1, 3).mean(0), [200, 60, 30],
                             atol=2)


def test_grayscale_and_alpha_become_rgb():
  encoded = _encode(_smooth_image(90, 120)[..., 0])
  gray = decode.square(encoded, 64)
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
  assert np.abs(gray.astype(np.float32) - _pillow_square(encoded, 64)).mean() < 1.5
  rgba = np.concatenate([_smooth_image(90, 120), np.full((90, 120, 1), 128, np.uint8)], -1)
  encoded = _encode(rgba, fmt='PNG')
  ours = decode.square(encoded, 64)
  assert ours.shape == (64, 64, 3)
  assert np.abs(ours.astype(np.float32) - _pillow_square(encoded, 64)).mean() < 1.5


@pytest.mark.parametrize('damage', ['truncated', 'garbage after the start marker', 'not an image'])
def test_damaged_files_raise_undecodable(damage):
  whole = _encode(_smooth_image(100, 100))
  encoded = {'truncated': whole[:len(whole) // 3],
             'garbage after the start marker': b'\xff\xd8' + bytes(500) + b'\xff\xd9',
             'not an image': b'hello, world' * 10}[damage]
  with pytest.raises(decode.UndecodableImage):
    decode.square(encoded, 64)


def handmade_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 2,
                rows: bytes = b'') -> bytes:
  """A PNG written by hand: its header says `width` x `height`, whatever `rows` hold."""
  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack('>I', len(payload)) + kind + payload +
            struct.pack('>I', zlib.crc32(kind + payload)))
  return (b'\x89PNG\r\n\x1a\n' +
          chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, bit_depth, colour_type, 0, 0, 0)) +
          chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def test_an_image_over_the_pixel_cap_is_refused_from_its_header():
  # 13000x13000 claimed by a PNG of 70 bytes: refused before a pixel is decoded.
  with pytest.raises(decode.UndecodableImage,
                     match=r'13000x13000 pixels, over the cap of 67,108,864 pixels'):
    decode.square(handmade_png(13000, 13000), 64)
  jpeg = _encode(_smooth_image(60, 80))   # through libjpeg-turbo's header
  with pytest.raises(decode.UndecodableImage, match=r'80x60 pixels, over the cap of 4,799 pixels'):
    decode.square(jpeg, 32, max_pixels=4799)
  assert decode.square(jpeg, 32, max_pixels=4800).shape == (32, 32, 3)


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped():
  samples = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
  rows = b''.join(b'\x00' + row.astype('>u2').tobytes() for row in samples)   # filter 0: none
  ours = decode.square(handmade_png(64, 64, bit_depth=16, colour_type=0, rows=rows), 64)
  expected = (samples >> 8).astype(np.uint8)   # the high byte of each sample
  for channel in range(3):
    np.testing.assert_array_equal(ours[..., channel], expected)


def test_a_jpeg_cut_short_is_refused_even_with_its_end_marker():
  whole = _encode(_smooth_image(100, 100), quality=95)
  decode.square(whole, 64)
  # libjpeg would fill the missing rows with grey and only warn.
  with pytest.raises(decode.UndecodableImage, match='a JPEG cut short'):
    decode.square(whole[:len(whole) * 6 // 10] + b'\xff\xd9', 64)


def test_formats_are_told_by_content_not_by_name():
  tiff = _encode(_smooth_image(40, 40), fmt='TIFF')   # Pillow reads it, but it is not one of ours
  with pytest.raises(decode.UndecodableImage, match='not a JPEG, PNG, GIF or BMP file'):
    decode.square(tiff, 32)
  for fmt in ('PNG', 'GIF', 'BMP', 'JPEG'):
    assert decode.format_of(_encode(_smooth_image(40, 40), fmt=fmt)) == fmt
