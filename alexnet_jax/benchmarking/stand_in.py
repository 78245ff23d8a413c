"""A source and a GPU decoder that stand in for a store and nvImageCodec where no GPU is.

Both decode real JPEGs with libjpeg-turbo, so their batches can be compared pixel for pixel
with the host's, and both wait a set time per image without holding Python's lock (as
libjpeg-turbo and nvImageCodec release it): on a CPU of two busy cores the rates of the
loader and of `to_devices.ToDevices` are then set by those waits, and how well the two
overlap can be measured as a ratio.
"""

import threading
import time

import jax
import numpy as np
import simplejpeg

from alexnet_jax.data import image_source


def jpegs(count: int, size: int, seed: int = 0) -> list[bytes]:
  """`count` JPEGs of `size` x `size`: smooth colour ramps, each its own."""
  rng = np.random.default_rng(seed)
  across, down = np.meshgrid(*[np.linspace(0, 1, size, dtype=np.float32)] * 2)
  out = []
  for _ in range(count):
    a, b, c = rng.uniform(0, 255, 3)
    image = np.stack([a * across, b * down, np.full_like(across, c)], -1)
    out.append(simplejpeg.encode_jpeg(np.ascontiguousarray(image.astype(np.uint8)),
                                      quality=90))
  return out


class SleepingSource(image_source.ImageSource):
  """Images stored as JPEGs; the host takes `latency_s` more to decode each."""
  stores_jpegs = True

  def __init__(self, stored: list[bytes], size: int, latency_s: float, classes: int = 4):
    self.image_size, self._stored = size, stored
    self._latency_s, self._classes = latency_s, classes

  def __len__(self) -> int:
    return len(self._stored)

  def read_into(self, index: int, out: np.ndarray) -> int:
    time.sleep(self._latency_s)
    simplejpeg.decode_jpeg(self._stored[index], colorspace='RGB', buffer=out)
    return index % self._classes

  def jpeg(self, index: int):
    return index % self._classes, memoryview(self._stored[index])


class Concurrency:
  """How many decodes run at once, and the most that ever did."""

  def __init__(self):
    self._lock = threading.Lock()
    self.now = self.most = 0

  def __enter__(self):
    with self._lock:
      self.now += 1
      self.most = max(self.most, self.now)

  def __exit__(self, *exc):
    with self._lock:
      self.now -= 1


class SleepingDecoder:
  """`gpu_decode.GpuDecoder`'s `decode`, on the host: `latency_s` per image, then
  libjpeg-turbo; one batch at a time, as an nvImageCodec decoder; `fail_at`: the index of an
  image it raises on."""

  def __init__(self, latency_s: float, concurrency: Concurrency | None = None,
               fail_at: int | None = None):
    self._latency_s, self._fail_at = latency_s, fail_at
    self.concurrency = concurrency or Concurrency()
    self._one_at_a_time = threading.Lock()
    self.version = 'stand-in (libjpeg-turbo)'

  def decode(self, device, pixels: np.ndarray, jpegs: dict, index: np.ndarray):
    out = pixels.copy()
    with self._one_at_a_time, self.concurrency:
      time.sleep(self._latency_s * len(jpegs))
      for row, jpeg in jpegs.items():
        if self._fail_at is not None and int(index[row]) == self._fail_at:
          raise RuntimeError(f'The stand-in decoder was told to fail on image {self._fail_at}.')
        simplejpeg.decode_jpeg(np.asarray(jpeg), colorspace='RGB', buffer=out[row])
    return jax.device_put(out, device)
