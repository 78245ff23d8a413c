"""Full-size images that stand in for photos where none are at hand, and a store of them.

Measure the input on real photos or on these: images upscaled from small ones
are smooth, and their JPEGs decode up to 1.7 times faster. These have a photo's
1/f^beta spectrum, so their JPEGs are as large as real photos' (20 to 27 KB at
256x256, quality 90) and decode as slowly.
"""

import concurrent.futures
import multiprocessing
import pathlib
import time

import numpy as np
import simplejpeg

from alexnet_jax.data import loader, prepare, store

FULL_SIZE = (500, 375)   # (width, height) of a typical ImageNet photo


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: coloured noise with a photo's 1/f^beta spectrum.

  beta is drawn from [2.4, 3.4]: at 256x256 and quality 90 the JPEGs then weigh 13 to
  27 KB, as real photos' do (a median of 19.5 KB over ImageNet's one image per class),
  and decode as fast.
  """
  beta = rng.uniform(2.4, 3.4)
  fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
  frequency = np.sqrt(fx ** 2 + fy ** 2)
  frequency[0, 0] = 1.0
  amplitude = frequency ** (-beta / 2)
  shared = None
  channels = []
  for _ in range(3):   # the channels of a photo go together: a shared part and one of each
    noise = np.fft.irfft2(amplitude * (rng.standard_normal(amplitude.shape) +
                                       1j * rng.standard_normal(amplitude.shape)),
                          s=(height, width))
    shared = noise if shared is None else shared
    channels.append(noise if len(channels) == 0 else 0.8 * shared + 0.45 * noise)
  image = np.stack(channels, -1)
  image = 120 + 55 * (image - image.mean()) / image.std() + rng.normal(0, 3, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _write_photo_like(path: pathlib.Path, seed: int) -> None:
  image = photo_like(np.random.default_rng(seed), FULL_SIZE[1], FULL_SIZE[0])
  path.write_bytes(simplejpeg.encode_jpeg(image, quality=90, colorspace='RGB'))


def make_folder(out: pathlib.Path, train: int, validation: int,
                           classes: int = 10) -> pathlib.Path:
  """OUT/train/<class>/ and OUT/val/<class>/ of full-size photo-like JPEGs (quality 90),
  made on every core; files already there are kept."""
  jobs = []
  for split, count, first_seed in (('train', train, 0), ('val', validation, 10**6)):
    for i in range(count):
      path = out / split / f'class_{i % classes:02d}' / f'{i:06d}.jpg'
      if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((path, first_seed + i))
  context = multiprocessing.get_context('spawn')   # no fork of a process holding threads
  with concurrent.futures.ProcessPoolExecutor(loader.cores(), mp_context=context) as pool:
    list(pool.map(_write_photo_like, *zip(*jobs), chunksize=16) if jobs else [])
  return out


def prepare_store(work: pathlib.Path, images: int, size: int) -> pathlib.Path:
  """A store of `images` photo-like training images (and a tenth as many for validation)
  under `work`; made once."""
  path = work / f'store_{images}_{size}'
  if not store.is_complete(path):
    start = time.perf_counter()
    folder = make_folder(work / f'photo_like_{images}', images, max(64, images // 10))
    made = time.perf_counter() - start
    prepare.prepare(f'image_folder:{folder}', str(path), prepare.Options(size=size),
                    progress=False)
    print(f'Made {images:,} photo-like {FULL_SIZE[0]}x{FULL_SIZE[1]} JPEGs in {made:.0f} s and '
          f'prepared them into {path} in {time.perf_counter() - start - made:.0f} s.',
          flush=True)
  return path
