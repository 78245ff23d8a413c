"""What the GPU's JPEG decoders reach several at once, beside a step, and against
libjpeg-turbo's pixels (`commands/benchmark_gpu_feed.py`, `commands/benchmark_gpu_decode.py`).

A decoder here is `gpu_decode.GpuDecoder` or a stand-in with its `decode` (`stand_in.py`).
nvImageCodec keeps one hardware batch in flight per decoder, so K batches at once take K
decoders, each called from a thread of its own, as `to_devices.ToDevices`' lanes call them.
"""

import ctypes
import ctypes.util
import pathlib
import threading

import jax
import numpy as np
import simplejpeg

from alexnet_jax.benchmarking import throughput
from alexnet_jax.benchmarking.clock import Clock


def _batch(jpegs, size: int, rows: int, start: int = 0):
  """(pixels, {row: JPEG}, index): a batch of `rows` of `jpegs`, every row on the GPU."""
  return (np.zeros((rows, size, size, 3), np.uint8),
          {row: jpegs[(start + row) % len(jpegs)] for row in range(rows)}, np.arange(rows))


def lanes_rate(decoders, device, jpegs, size: int, rows: int,
               repeats: int) -> tuple[float, float]:
  """(images/s, cores used) of len(decoders) decoders, each on its own thread, each decoding
  `repeats` batches of `rows` of `jpegs` on `device`, one after another."""
  batch = _batch(jpegs, size, rows)
  for decoder in decoders:   # the first call fixes the engines' share of a batch
    jax.block_until_ready(decoder.decode(device, *batch))
  start = threading.Barrier(len(decoders) + 1)
  errors = []

  def decode_on(decoder):
    start.wait()
    try:
      for _ in range(repeats):
        jax.block_until_ready(decoder.decode(device, *batch))
    except Exception as e:   # raised below, on the measuring thread
      errors.append(e)

  threads = [threading.Thread(target=decode_on, args=(d,)) for d in decoders]
  for thread in threads:
    thread.start()
  start.wait()
  with Clock() as clock:
    for thread in threads:
      thread.join()
    clock.stop()
  if errors:
    raise errors[0]
  return rows * repeats * len(decoders) / clock.wall, clock.cores


def step_beside(step: throughput.Step, decoders, device, jpegs, size: int, batch: int,
                steps: int, warmup: int) -> tuple[float, float]:
  """(the step's images/s, the decoders' images/s) with the step training on a batch already
  on the devices while each decoder decodes batch after batch on its own thread."""
  done, decoded = threading.Event(), [0] * len(decoders)
  rows = _batch(jpegs, size, batch)

  def decode_on(i, decoder):
    while not done.is_set():
      jax.block_until_ready(decoder.decode(device, *rows))
      decoded[i] += batch

  threads = [threading.Thread(target=decode_on, args=(i, d), daemon=True)
             for i, d in enumerate(decoders)]
  for thread in threads:
    thread.start()
  with Clock() as clock:
    rate = throughput.step_alone(step, size, batch, steps, warmup)[0]
    clock.stop()
  done.set()
  for thread in threads:
    thread.join()
  return rate, sum(decoded) / clock.wall


def differences(decoder, device, jpegs, size: int, batch: int = 256) -> tuple[int, float, float]:
  """(largest, mean difference per pixel channel, share of channels that differ) between the
  GPU's pixels and libjpeg-turbo's, over `jpegs`."""
  largest, total, differ, count = 0, 0.0, 0, 0
  for start in range(0, len(jpegs), batch):
    chunk = jpegs[start:start + batch]
    pixels = np.zeros((len(chunk), size, size, 3), np.uint8)
    gpu = np.asarray(decoder.decode(device, pixels, dict(enumerate(chunk)),
                                    np.arange(len(chunk))))
    host = np.stack([simplejpeg.decode_jpeg(j, colorspace='RGB') for j in chunk])
    diff = np.abs(gpu.astype(np.int16) - host.astype(np.int16))
    largest, total = max(largest, int(diff.max())), total + float(diff.sum())
    differ, count = differ + int((diff > 0).sum()), count + diff.size
  return largest, total / count, differ / count


def hardware_engines() -> str:
  """The GPU's JPEG engines and cores in each, as nvJPEG reports them, or why not known."""
  library = _nvjpeg()
  if library is None:
    return 'unknown (no libnvjpeg found)'
  handle = ctypes.c_void_p()
  hardware_backend = 3   # NVJPEG_BACKEND_HARDWARE
  status = library.nvjpegCreateEx(hardware_backend, None, None, 0, ctypes.byref(handle))
  # A GPU without the engines refuses the hardware backend (e.g. NVJPEG_STATUS_ARCH_MISMATCH).
  if status != 0:
    return f'none usable (nvjpegCreateEx with the hardware backend: status {status})'
  engines, cores = ctypes.c_uint(), ctypes.c_uint()
  info = getattr(library, 'nvjpegGetHardwareDecoderInfo', None)   # CUDA 11.4 and later
  status = (info(handle, ctypes.byref(engines), ctypes.byref(cores)) if info is not None
            else 'not in this nvJPEG')
  library.nvjpegDestroy(handle)
  if status != 0:
    return f'unknown (nvjpegGetHardwareDecoderInfo: status {status})'
  return f'{engines.value} engines x {cores.value} cores'


def _nvjpeg():
  """libnvjpeg, from the CUDA wheels (nvImageCodec's) or the system; None if absent."""
  candidates = []
  try:
    import nvidia   # noqa: PLC0415  (the CUDA wheels' namespace, GPU hosts only)
    for root in nvidia.__path__:
      candidates += sorted(pathlib.Path(root).glob('**/libnvjpeg.so*'), reverse=True)
  except ImportError:
    pass
  found = ctypes.util.find_library('nvjpeg')
  for path in [*candidates, *([found] if found else [])]:
    try:
      return ctypes.CDLL(str(path))
    except OSError:
      continue
  return None
