"""JPEG decoding on NVIDIA GPUs: nvImageCodec (nvJPEG) decodes each device's rows on it.

nvImageCodec drives both of nvJPEG's decoders: the hardware engines beside the SMs (A100,
H100 and H200 have them) take `hardware_share` of each batch, and nvJPEG's CUDA decoder the
rest (and whatever the engines refuse). nvImageCodec registers the CUDA decoder as
`HYBRID_CPU_GPU`: by default it decodes the Huffman codes of an image under 1,000,000 pixels
on the host's cores and the rest on the SMs; `huffman_on_gpu` sets its
`hybrid_huffman_threshold` to 0, which puts every image's Huffman decoding on the SMs (the
all-GPU path). No decoder registers as `GPU_ONLY` (asking for it fails with "Could not create
decoder. Code: 7"). Each decoder keeps one hardware batch in flight (a call waits for its
previous one), so `to_devices.ToDevices` gives each of its lanes a `GpuDecoder` of its own.
Each device's block of a batch is one buffer allocated here (CuPy); every image is
decoded straight into its row of it, on a stream of this module's, and the buffer becomes a
JAX array by DLPack, which makes JAX's stream wait for the decode and keeps the buffer alive
until JAX no longer reads it: no copy, no array per image, no pixel through the host.

This module is the only one that imports the decoder package, CuPy and `jax.dlpack`; the
loader sends bytes, `to_devices.py` calls `decode`, and nothing past it learns where a row
was decoded.

nvJPEG and libjpeg-turbo round differently: on an H200, over 1,000 real photos stored at
256x256, the hardware decoders' pixels differ from libjpeg-turbo's by 1 level at most, the
CUDA decoder's (Huffman on the host) by 3 at most (2.7% of the channels, 0.03 levels on
average; BENCHMARKS.md, "Decoding on the GPU"). A run always decodes a row where it did before
a resume (`host_batch.DecodeSplit`, `decode_share.py`), so resumed runs read the same pixels.
"""

import logging

import numpy as np
import simplejpeg

from alexnet_jax.errors import ConfigError, DataError

INSTALL = 'pip install "nvidia-nvimgcodec-cu13[nvjpeg]" cupy-cuda13x'
INSTALL_CUDA12 = 'pip install "nvidia-nvimgcodec-cu12[nvjpeg]" cupy-cuda12x'


def _import():
  """(nvimgcodec, cupy); ImportError if either is missing."""
  import cupy   # noqa: PLC0415  (optional: GPU hosts only)
  from nvidia import nvimgcodec   # noqa: PLC0415
  return nvimgcodec, cupy


def missing_package() -> str | None:
  """Why the GPU decoder cannot be loaded (with the line that installs it); None if it can."""
  try:
    _import()
  except ImportError as e:
    return (f'{e}. Install it with: {INSTALL}  (CUDA 12: {INSTALL_CUDA12})')
  return None


# Passing options replaces nvImageCodec's default, ':fancy_upsampling=0': kept, or the pixels
# change. The threshold of 0 moves the CUDA decoder's Huffman decoding onto the SMs.
OPTIONS = ':fancy_upsampling=0'
HUFFMAN_ON_GPU = OPTIONS + ' nvjpeg_cuda_decoder:hybrid_huffman_threshold=0'
# Host threads per decoder (nvImageCodec's default is one per core, for each decoder).
CPU_THREADS = 2


class GpuDecoder:
  """Decodes the rows of a host batch that carry JPEG bytes, each on its own device.

  The engines' share of a batch is fixed, in images, at a decoder's first call: a decoder
  serves one batch size.
  """

  def __init__(self, devices, image_size: int, hardware_share: float,
               huffman_on_gpu: bool = False, cpu_threads: int = CPU_THREADS):
    nvimgcodec, cupy = _import()
    self._nvimgcodec, self._cupy = nvimgcodec, cupy
    self._size = image_size
    kinds = nvimgcodec.BackendKind
    backends = [nvimgcodec.Backend(kinds.HYBRID_CPU_GPU)]   # also what the engines refuse
    if hardware_share > 0:
      backends.insert(0, nvimgcodec.Backend(kinds.HW_GPU_ONLY, load_hint=hardware_share))
    options = HUFFMAN_ON_GPU if huffman_on_gpu else OPTIONS
    # Stored images are upright RGB already: no EXIF turn, no colour conversion but YCbCr's.
    self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False,
                                           color_spec=nvimgcodec.ColorSpec.SRGB)
    self._decoders, self._streams = {}, {}
    for device in devices:
      ordinal = device.local_hardware_id
      with cupy.cuda.Device(ordinal):
        self._streams[device] = cupy.cuda.Stream(non_blocking=True)
      self._decoders[device] = nvimgcodec.Decoder(
          device_id=ordinal, max_num_cpu_threads=cpu_threads, backends=backends,
          options=options)
    self.version = nvimgcodec.__version__

  def decode(self, device, pixels: np.ndarray, jpegs: dict, index: np.ndarray):
    """uint8 [n, S, S, 3] on `device`: rows in `jpegs` ({row: JPEG bytes}) decoded there, the
    other rows `pixels`' (decoded on the host)."""
    import jax.dlpack   # noqa: PLC0415  (only here: see the module's docstring)
    cupy, nvimgcodec = self._cupy, self._nvimgcodec
    stream = self._streams[device]
    with cupy.cuda.Device(device.local_hardware_id), stream:
      out = cupy.empty(pixels.shape, cupy.uint8)
      for start, stop in _runs([r for r in range(len(pixels)) if r not in jpegs]):
        out[start:stop].set(pixels[start:stop], stream=stream)
      rows = sorted(jpegs)
      if rows:
        images = nvimgcodec.as_images([out[r] for r in rows], cuda_stream=stream.ptr)
        sources = [nvimgcodec.CodeStream(np.asarray(jpegs[r])) for r in rows]
        decoded = self._decoders[device].decode(sources, images=images, params=self._params,
                                                cuda_stream=stream.ptr)
        for row, image in zip(rows, decoded):
          if image is None or tuple(image.shape) != out.shape[1:]:
            out[row].set(host_fallback(jpegs[row], self._size, index[row]), stream=stream)
      return jax.dlpack.from_dlpack(out, device=device, copy=False)


def host_fallback(jpeg, size: int, index) -> np.ndarray:
  """A JPEG the GPU refused, decoded by libjpeg-turbo; DataError if it cannot be either."""
  image = np.empty((size, size, 3), np.uint8)
  try:
    shape = simplejpeg.decode_jpeg(np.asarray(jpeg), colorspace='RGB', buffer=image).shape
  except ValueError as e:
    shape = e
  if shape != image.shape:
    raise DataError(f'Image {int(index)} of the split being read cannot be decoded, on the '
                    f'GPU or on the host ({shape}): the store is damaged; prepare it again.')
  logging.warning('The GPU did not decode image %d of the split being read; the host did.',
                  int(index))
  return image


def _runs(rows: list[int]) -> list[tuple[int, int]]:
  """Consecutive rows as [start, stop) ranges."""
  runs = []
  for row in rows:
    if runs and runs[-1][1] == row:
      runs[-1] = (runs[-1][0], row + 1)
    else:
      runs.append((row, row + 1))
  return runs


MODES = ('auto', 'host', 'device')


def choose(mode: str, *, platform: str, jpeg_store: bool, devices, image_size: int,
           hardware_share: float, lanes: int = 1) -> list[GpuDecoder] | None:
  """`lanes` GPU decoders (one per batch decoded at once), or None for the host's; logs which
  and why.

  `mode`: 'device' (the GPU, or a ConfigError saying why not), 'host', or 'auto' (the GPU
  where the devices are GPUs, the store holds JPEGs and the package loads; else the host).
  """
  if mode == 'host':
    logging.info('JPEGs are decoded on the host (--config.decode=host).')
    return None
  reason = None
  if not jpeg_store:
    reason = 'the dataset is not a store of JPEGs (`commands.prepare --encoding=jpeg`)'
  elif platform != 'gpu':
    reason = f'the devices are {platform.upper()}s, and only NVIDIA GPUs decode JPEGs here'
  elif (missing := missing_package()) is not None:
    reason = f'the GPU decoder is not installed: {missing}'
  if reason is not None:
    if mode == 'device':
      raise ConfigError(f'--config.decode=device: {reason}. Or decode on the host: '
                        '--config.decode=host.')
    # On a GPU host the missing package is worth a warning: the host may not keep up.
    log = logging.warning if platform == 'gpu' and jpeg_store else logging.info
    log('JPEGs are decoded on the host: %s.', reason)
    return None
  decoders = [GpuDecoder(devices, image_size, hardware_share) for _ in range(lanes)]
  logging.info('JPEGs are decoded on the GPUs (nvImageCodec %s; %.0f%% of each batch on the '
               'hardware decoders; %d batches at once).', decoders[0].version,
               100 * hardware_share, lanes)
  return decoders
