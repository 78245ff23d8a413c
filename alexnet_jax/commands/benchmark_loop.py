"""The training loop's real speed: input and step together, beside each alone.

  python -m alexnet_jax.commands.benchmark_loop --store=~/alexnet_jax_data/imagenet2012
  python -m alexnet_jax.commands.benchmark_loop --photo_like=4000 --input_only

Rows, all on the same model, batch and devices:
- decode alone: the store's JPEGs decoded in a loop on one thread, each into the
  same array (libjpeg-turbo alone: what a core can do at best), and the same in a
  process per core at once (what each core can do when all are busy);
- input alone: the loader (`alexnet_jax/data/loader.py`) reading host batches
  of stored images, for each `--readings` (decoding processes x threads),
  measured in turns with the decoder alone (`--rounds`, the median of each) so that
  a busy machine slows each alike;
- with `--folder`, the same loader reading a folder of JPEGs, each decoded and
  resized as it is read (what a run without a store does);
- step alone: the trainer's train step (`parallel.make_train_step`, the paper's
  augmentation on the device) on a batch already on the devices;
- the loop: the loader's batches copied to the devices on its background
  thread and trained on, as the trainer does it, with the trainer's decoding
  resources (`--workers`, `--threads`);
- with `--gpu_decode=SHARES` (a GPU host with the GPU decoder installed), the
  input alone and the loop again with the store's JPEGs decoded on the GPU but
  each share of the rows, decoded on the host (`alexnet_jax/data/gpu_decode.py`).

For each: images/s, the cores used (CPU time of this process and its decoding
processes over wall time), images/s per core used, and for the step and the
loop the CPU time the training thread spent per step. Measure the input on
real photos: images upscaled from small ones are smooth, and their JPEGs
decode up to 1.7 times faster. Without a store of real photos,
`--photo_like=N` makes N full-size images whose JPEGs are as large as real
photos' (20 to 27 KB at 256x256, quality 90) and prepares a store of them.
Imports no TensorFlow, clu or ml_collections: it runs on an accelerator host
that has only JAX and the loader's wheels (grain, array_record, simplejpeg).
"""

import argparse
import concurrent.futures
import importlib
import multiprocessing
import os
import pathlib
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import simplejpeg

from alexnet_jax import models, optim, parallel, platform
from alexnet_jax.commands import benchmark, prepare
from alexnet_jax.data import gpu_decode, image_folder, loader, store, synthetic, to_devices

FULL_SIZE = (500, 375)   # (width, height) of a typical ImageNet photo
# compare_inputs' rows of the decoder by itself: on one thread, and in a process per core.
DECODE_ALONE, DECODE_EVERY_CORE = 'decode alone', 'decode alone on every core'


class _Clock:
  """Wall time and CPU time of this process and its live child processes, and of the
  calling thread alone."""

  def __enter__(self):
    self._wall, self._cpu, self._thread = time.perf_counter(), _cpu_seconds(), time.thread_time()
    return self

  def stop(self):
    self.wall = time.perf_counter() - self._wall
    self.cores = (_cpu_seconds() - self._cpu) / self.wall
    self.thread = time.thread_time() - self._thread

  def __exit__(self, *exc):
    if not hasattr(self, 'wall'):
      self.stop()


def _cpu_seconds() -> float:
  """User and system CPU seconds of this process, its reaped children and its live ones."""
  total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
                                                               resource.RUSAGE_CHILDREN)
              for f in ('ru_utime', 'ru_stime'))
  ticks = os.sysconf('SC_CLK_TCK')
  for pid in _descendants(os.getpid()):
    try:
      fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
      continue
    total += (int(fields[11]) + int(fields[12])) / ticks   # utime, stime
  return total


def _descendants(pid: int) -> list[int]:
  parents = {}
  for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
    try:
      parents[int(stat.parent.name)] = int(stat.read_text().rsplit(')', 1)[1].split()[1])
    except OSError:
      continue
  found, frontier = [], [pid]
  while frontier:
    children = [child for child, parent in parents.items() if parent in frontier]
    found += children
    frontier = children
  return found


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


def make_photo_like_folder(out: pathlib.Path, train: int, validation: int,
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
    list(pool.map(_importable(_write_photo_like), *zip(*jobs), chunksize=16) if jobs else [])
  return out


def prepare_photo_like(work: pathlib.Path, images: int, size: int) -> pathlib.Path:
  """A store of `images` photo-like training images (and a tenth as many for validation)
  under `work`; made once."""
  path = work / f'store_{images}_{size}'
  if not store.is_complete(path):
    start = time.perf_counter()
    folder = make_photo_like_folder(work / f'photo_like_{images}', images, max(64, images // 10))
    made = time.perf_counter() - start
    prepare.prepare(f'image_folder:{folder}', str(path), prepare.Options(size=size),
                    progress=False)
    print(f'Made {images:,} photo-like {FULL_SIZE[0]}x{FULL_SIZE[1]} JPEGs in {made:.0f} s and '
          f'prepared them into {path} in {time.perf_counter() - start - made:.0f} s.',
          flush=True)
  return path


def _records(split: store.StoreSplit, count: int) -> list[bytes]:
  return [split.record(i) for i in range(min(count, len(split)))]


def _importable(function):
  """`function` as its module is imported, not as `python -m` runs it (as __main__): the
  processes the spawn method starts find it there."""
  return getattr(importlib.import_module(__spec__.name), function.__name__)


def _decode_loop(split: store.StoreSplit, images: int) -> tuple[int, float, float]:
  """(images, CPU seconds, wall seconds) of decoding the store's JPEGs on this thread."""
  records = _records(split, images)
  out = np.empty((split.image_size, split.image_size, 3), np.uint8)
  wall, cpu = time.perf_counter(), time.thread_time()
  for record in records:
    store.decode_record_into(record, 'jpeg', out)
  return len(records), time.thread_time() - cpu, time.perf_counter() - wall


def decode_alone(split: store.StoreSplit, images: int, processes: int = 1) -> tuple[float, float]:
  """(images/s, cores used) of libjpeg-turbo decoding the store's JPEGs, on this thread or in
  `processes` processes at once (two cores busy decode slower each than one: they share the
  caches and the memory)."""
  if processes == 1:
    count, cpu, wall = _decode_loop(split, images)
    return count / wall, cpu / wall
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
    runs = list(pool.map(_importable(_decode_loop), [split] * processes, [images] * processes))
  wall = max(w for _, _, w in runs)
  return sum(n for n, _, _ in runs) / wall, sum(c for _, c, _ in runs) / wall


def _data(split: loader.Split, size: int, batch: int, reading: loader.Reading):
  return loader.make_data(split, split, name='benchmark', num_classes=1000, image_size=size,
                          global_batch=batch, seed=0, reading=reading)


def input_alone(split: loader.Split, size: int, batch: int, reading: loader.Reading,
                steps: int, warmup: int) -> tuple[float, float]:
  """(images/s, cores used) of the loader alone."""
  stream = _data(split, size, batch, reading).train_batches(0)
  try:
    for _ in range(warmup):
      next(stream)
    with _Clock() as clock:
      for _ in range(steps):
        next(stream)
      clock.stop()
  finally:
    stream.close()
  return steps * batch / clock.wall, clock.cores


class Step:
  """The trainer's train step for one model on all local devices."""

  def __init__(self, model: str, width: float, dtype: str, image_size: int):
    self.mesh = parallel.make_mesh(jax.local_devices())
    self.model = models.AlexNet(num_classes=1000, variant=model, width=width,
                                dtype=jnp.dtype(dtype))
    self.state = parallel.init_train_state(self.model, optim.paper_sgd(0.01), image_size, 0,
                                           self.mesh)
    self.spec = parallel.batch_spec(self.model, self.mesh)
    self.step = parallel.make_train_step(self.model, benchmark.augmentation(image_size), 0,
                                         self.mesh)

  def run(self, batches, steps: int, warmup: int) -> _Clock:
    """`steps` steps on `batches` (an iterator of device batches), timed."""
    for _ in range(warmup):
      self.state, metrics = self.step(self.state, next(batches))
    jax.block_until_ready(self.state)
    with _Clock() as clock:
      for _ in range(steps):
        self.state, metrics = self.step(self.state, next(batches))
      jax.block_until_ready((self.state, metrics))
      clock.stop()
    return clock


def step_alone(step: Step, size: int, batch: int, steps: int, warmup: int):
  """(images/s, cores used, training thread's CPU ms per step)."""
  rng = np.random.default_rng(0)
  on_devices = parallel.shard_batch({
      'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
      'label': rng.integers(0, 1000, (batch,), np.int32)}, step.mesh, step.spec)
  clock = step.run(iter(lambda: on_devices, None), steps, warmup)
  return steps * batch / clock.wall, clock.cores, 1000 * clock.thread / steps


def loop(step: Step, split: loader.Split, size: int, batch: int, reading: loader.Reading,
         steps: int, warmup: int, staging: str = 'auto', decoder=None, host_share: float = 0.0):
  """(images/s, cores used, training thread's CPU ms per step) of the loader's batches,
  copied to the devices on its background thread (and with `decoder` their JPEGs decoded
  there, but `host_share` of each device's rows), trained on."""
  batches = _on_devices(step, split, size, batch, reading, staging, decoder, host_share)
  try:
    clock = step.run(batches, steps, warmup)
  finally:
    batches.close()
  return steps * batch / clock.wall, clock.cores, 1000 * clock.thread / steps


def _on_devices(step: Step, split: loader.Split, size: int, batch: int,
                reading: loader.Reading, staging: str, decoder, host_share: float):
  """The loader's batches of `split`, put on `step`'s devices as the trainer puts them."""
  put = to_devices.ToDevices(step.mesh, step.spec, staging, decoder=decoder, host_batch=batch,
                             host_share=host_share)
  return _data(split, size, batch, reading).train_batches(0, put=put, split=put.decode_split)


def input_to_devices(step: Step, split: loader.Split, size: int, batch: int,
                     reading: loader.Reading, steps: int, warmup: int, decoder,
                     host_share: float = 0.0):
  """(images/s, cores used, None) of the loader's batches put on the devices, decoded there
  by `decoder` (but `host_share` of each device's rows), without a step."""
  batches = _on_devices(step, split, size, batch, reading, 'auto', decoder, host_share)
  try:
    for _ in range(warmup):
      next(batches)
    with _Clock() as clock:
      for _ in range(steps):
        jax.block_until_ready(next(batches))
      clock.stop()
  finally:
    batches.close()
  return steps * batch / clock.wall, clock.cores, None


def compare_inputs(split: loader.Split, size: int, batch: int, readings, rounds: int,
                   steps: int, warmup: int, decode: store.StoreSplit | None = None) -> dict:
  """{reading: (median images/s, median cores used)}, and {'decode alone': ...} with `decode`
  (a store of JPEGs): the rows measured in turns, `rounds` times, so that whatever else the
  machine does slows each alike."""
  decoders = [DECODE_ALONE, DECODE_EVERY_CORE] if decode else []
  results = {reading: [] for reading in decoders + list(readings)}
  for _ in range(rounds):
    for reading in results:
      if reading in decoders:
        processes = 1 if reading == DECODE_ALONE else loader.cores()
        results[reading].append(decode_alone(decode, batch * steps, processes))
      else:
        results[reading].append(input_alone(split, size, batch, reading, steps, warmup))
  return {reading: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
          for reading, runs in results.items()}


def _reading(text: str) -> loader.Reading:
  workers, threads = (int(n) for n in text.split('x'))
  return loader.Reading(workers=workers, threads=threads)


def describe_reading(reading: loader.Reading) -> str:
  threads = f'{reading.threads} thread{"s" if reading.threads != 1 else ""}'
  if reading.workers == 0:
    return f'{threads} in this process'
  return f'{reading.workers} decoding process{"es" if reading.workers != 1 else ""} x {threads}'


def main(args):
  workers, threads = loader.auto_resources(args.workers, args.threads)
  trainers_reading = loader.Reading(workers=workers, threads=threads)
  readings = ([_reading(r) for r in args.readings.split(',')] if args.readings else
              [loader.Reading(workers=0, threads=loader.cores()),
               loader.Reading(workers=2, threads=max(1, (loader.cores() - 1) // 2))
               if workers == 0 else trainers_reading])
  store_path = args.store
  if args.photo_like:
    store_path = str(prepare_photo_like(pathlib.Path(args.work).expanduser(), args.photo_like,
                                        args.stored_size))
  dtype = args.dtype or platform.compute_dtype('auto')
  rows, measure = [], dict(batch=args.batch, steps=args.steps, warmup=args.warmup)
  if store_path:
    prepared = store.open_store(pathlib.Path(store_path).expanduser())
    size, source = prepared.image_size, prepared.source_of('train')
    split = loader.Split(source, 0, len(source))
    sizes = [len(r) for r in _records(source, 1000)]
    what = (f'store {store_path} ({len(source):,} {prepared.encoding} images of {size}x{size}, '
            f'{np.mean(sizes) / 1024:.1f} KiB on average)')
    read = 'the store'
  else:
    size = args.stored_size
    split = loader.Split(synthetic.SyntheticSplit(synthetic.TRAIN, 12_800, size, 10), 0, 12_800)
    what, read = f'generated images ({size}x{size})', 'generated images'
  device = jax.local_devices()[0]
  print(f'jax {jax.__version__}, {jax.local_device_count()} x {device.device_kind}; '
        f'{loader.cores()} cores; {what}; {args.model} width {args.width}, {dtype}, batch '
        f'{args.batch}, patches of {args.image_size}; the trainer\'s decoding: '
        f'{describe_reading(trainers_reading)}', flush=True)
  decode = source if store_path and prepared.encoding == 'jpeg' else None
  for reading, (rate, cores) in compare_inputs(split, size, args.batch, readings, args.rounds,
                                               args.steps, args.warmup, decode).items():
    if reading == DECODE_ALONE:
      what = "decode alone: the store's JPEGs, one thread"
    elif reading == DECODE_EVERY_CORE:
      what = f"decode alone: the store's JPEGs, {loader.cores()} processes at once"
    else:
      what = f'input alone: {read}, {describe_reading(reading)}'
    rows.append((what, rate, cores, None))
    print(rows[-1], flush=True)
  if args.folder:
    listed = image_folder.open_folder(args.folder, ['train'])
    folder_split = loader.Split(image_folder.FolderSplit(*listed.splits['train'],
                                                         args.stored_size),
                                0, len(listed.splits['train'][0]))
    rows.append(('input alone: JPEG files decoded and resized as read',
                 *input_alone(folder_split, args.stored_size, reading=trainers_reading,
                              **measure), None))
    print(rows[-1], flush=True)
  step_rate = None
  if not args.input_only:
    step = Step(args.model, args.width, dtype, args.image_size)
    rows.append(('step alone (batch already on the devices)', *step_alone(step, size,
                                                                         **measure)))
    print(rows[-1], flush=True)
    step_rate = rows[-1][1]
    rows.append((f'the loop: {read}, then the step',
                 *loop(step, split, size, reading=trainers_reading, staging=args.staging,
                       **measure)))
    print(rows[-1], flush=True)
    for share in args.gpu_decode:
      decoder = gpu_decode.GpuDecoder(jax.local_devices(), size, args.hardware_share)
      split_text = f', {share:.0%} of the rows on the host' if share else ''
      rows.append((f'input alone: {read}, JPEGs decoded on the GPU{split_text}',
                   *input_to_devices(step, split, size, reading=trainers_reading,
                                     decoder=decoder, host_share=share, **measure)))
      print(rows[-1], flush=True)
      rows.append((f'the loop: {read}, JPEGs decoded on the GPU{split_text}, then the step',
                   *loop(step, split, size, reading=trainers_reading, staging=args.staging,
                         decoder=decoder, host_share=share, **measure)))
      print(rows[-1], flush=True)
  print()
  print('| what | images/s | cores used | images/s per core used | of the step alone | '
        'training thread, CPU ms per step |')
  print('|---|---|---|---|---|---|')
  for name, rate, cores, host_ms in rows:
    print(f'| {name} | {rate:,.0f} | {cores:.2f} | {rate / cores:,.0f} | '
          f'{f"{rate / step_rate:.1%}" if step_rate and host_ms is not None else "-"} | '
          f'{f"{host_ms:.2f}" if host_ms is not None else "-"} |')


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  where = parser.add_mutually_exclusive_group()
  where.add_argument('--store', help='a prepared store (default: generated images)')
  where.add_argument('--photo_like', type=int, default=0,
                     help='make this many full-size photo-like JPEGs under --work and read '
                          'them from a store prepared there')
  parser.add_argument('--work', default='/tmp/alexnet_benchmark_loop',
                      help='with --photo_like: where the JPEGs and the store go')
  parser.add_argument('--folder', help='also time reading this image folder (ROOT with a '
                      'train/ split) without a store')
  parser.add_argument('--stored_size', type=int, default=256,
                      help='side of the stored images (synthetic, folder and prepared)')
  parser.add_argument('--image_size', type=int, default=224, help='the patch the model sees')
  parser.add_argument('--model', default='owt', choices=sorted(models.VARIANTS))
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'),
                      help="default: the trainer's on this platform (bfloat16 on GPUs and "
                           'TPUs, float32 on the CPU)')
  parser.add_argument('--batch', type=int, default=128, help='global batch size')
  parser.add_argument('--workers', type=int, default=-1,
                      help='decoding processes of the loop; 0: in this process; -1: as the '
                           'trainer picks')
  parser.add_argument('--threads', type=int, default=-1,
                      help='decoding threads per process of the loop; -1: as the trainer picks')
  parser.add_argument('--readings', help="the input rows' decoding, PROCESSESxTHREADS,... "
                      '(default: threads on every core, and processes as the trainer picks '
                      'them, or 2 where it picks none)')
  parser.add_argument('--rounds', type=int, default=3,
                      help='the input rows, each measured this many times in turns (median)')
  parser.add_argument('--staging', default='auto', choices=('auto', 'pinned', 'none'),
                      help='host memory the loop copies batches to the devices from')
  parser.add_argument('--input_only', action='store_true', help='time the input rows only')
  parser.add_argument('--gpu_decode', type=lambda text: [float(s) for s in text.split(',')],
                      default=[], help='also the input and the loop with the JPEGs decoded on '
                      'the GPU, once for each of these shares of the rows decoded on the host '
                      '(e.g. 0,0.25)')
  parser.add_argument('--hardware_share', type=float, default=1.0,
                      help="with --gpu_decode: the share of the GPU's rows its hardware "
                           'decoders take')
  parser.add_argument('--steps', type=int, default=20, help='timed batches or steps')
  parser.add_argument('--warmup', type=int, default=5)
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
