"""The training loop's real speed: input and step together, beside each alone.

  python -m alexnet_jax.benchmark_loop --store=~/alexnet_jax_data/imagenet2012
  python -m alexnet_jax.benchmark_loop --fullsize_from=../shared/data/imagenette/train \\
      --work=/tmp/fullsize --images=4000

Rows, all on the same model, batch and devices:
- input alone: the loader (`alexnet_jax/data/loader.py`) reading host batches of
  stored images from a prepared store, decoded by its worker processes;
- with `--folder` (or `--fullsize_from`), the same loader reading a folder of
  JPEGs, each decoded and resized as it is read (what a run without a store does);
- step alone: the trainer's train step (`parallel.make_train_step`, the paper's
  augmentation on the device) on a batch already on the devices;
- the loop: the loader's batches copied to the devices and trained on, as the
  trainer does it.

For each: images/s, the cores used (CPU time of this process and its worker
processes over wall time) and images/s per core used. `--fullsize_from` first
makes a set of full-size JPEGs (each image of the folder upscaled to 500x375,
ImageNet's typical size, at quality 90) and prepares a 256x256 store of it.
Imports no TensorFlow, clu or ml_collections: it runs on an accelerator host
that has only JAX and the loader's wheels (grain, array_record, simplejpeg).
"""

import argparse
import os
import pathlib
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import benchmark, models, optim, parallel
from alexnet_jax.data import image_folder, loader, prepare, store, synthetic

FULL_SIZE = (500, 375)   # (width, height) of a typical ImageNet photo


class _Clock:
  """Wall time and CPU time of this process and its live child processes."""

  def __enter__(self):
    self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
    return self

  def stop(self):
    self.wall = time.perf_counter() - self._wall
    self.cores = (_cpu_seconds() - self._cpu) / self.wall

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


def make_fullsize_folder(source: str, out: pathlib.Path, images: int) -> pathlib.Path:
  """OUT/train/<class>/: the first `images` JPEGs under `source` (a train split's class
  folders), each upscaled to 500x375 and saved at quality 90."""
  from PIL import Image
  paths = sorted(p for p in pathlib.Path(source).glob('*/*') if p.suffix.lower() in
                 image_folder.SUFFIXES)[:images]
  for path in paths:
    target = out / 'train' / path.parent.name / (path.stem + '.jpg')
    if not target.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      with Image.open(path) as image:
        image.convert('RGB').resize(FULL_SIZE, Image.BICUBIC).save(target, quality=90)
  return out


def _data(split: loader.Split, size: int, batch: int, workers: int, threads: int):
  return loader.make_data(split, split, name='benchmark', num_classes=1000, image_size=size,
                          global_batch=batch, seed=0,
                          reading=loader.Reading(workers=workers, threads=threads))


def input_alone(split: loader.Split, size: int, batch: int, workers: int, threads: int,
                steps: int, warmup: int):
  """(images/s, cores used) of the loader alone."""
  stream = _data(split, size, batch, workers, threads).train_batches(0)
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

  def __init__(self, args, image_size: int):
    self.mesh = parallel.make_mesh(jax.local_devices())
    self.model = models.AlexNet(num_classes=1000, variant=args.model, width=args.width,
                                dtype=jnp.dtype(args.dtype))
    self.state = parallel.init_train_state(self.model, optim.paper_sgd(0.01), image_size, 0,
                                           self.mesh)
    self.spec = parallel.batch_spec(self.model, self.mesh)
    self.step = parallel.make_train_step(self.model, benchmark.augmentation(image_size), 0,
                                         self.mesh)

  def run(self, batches, steps: int, warmup: int):
    """(images/s, cores used) of `steps` steps on `batches` (an iterator of device batches)."""
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
  rng = np.random.default_rng(0)
  on_devices = parallel.shard_batch({
      'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
      'label': rng.integers(0, 1000, (batch,), np.int32)}, step.mesh, step.spec)
  clock = step.run(iter(lambda: on_devices, None), steps, warmup)
  return steps * batch / clock.wall, clock.cores


def loop(step: Step, split: loader.Split, size: int, batch: int, workers: int, threads: int,
         steps: int, warmup: int):
  host = _data(split, size, batch, workers, threads).train_batches(0)
  try:
    clock = step.run(parallel.prefetch_to_mesh(host, step.mesh, step.spec), steps, warmup)
  finally:
    host.close()
  return steps * batch / clock.wall, clock.cores


def main(args):
  workers, threads = loader.auto_resources(args.workers, args.threads)
  folder_split = None
  store_path = args.store
  if args.fullsize_from:
    work = pathlib.Path(args.work)
    folder = make_fullsize_folder(args.fullsize_from, work / 'images', args.images)
    store_path = str(work / 'store')
    start = time.perf_counter()
    prepare.prepare(f'image_folder:{folder}', store_path,
                    prepare.Options(size=args.stored_size, workers=args.workers),
                    split_names=('train',), progress=False)
    print(f'Prepared {args.images} full-size JPEGs ({FULL_SIZE[0]}x{FULL_SIZE[1]}) into '
          f'{store_path} in {time.perf_counter() - start:.0f} s.', flush=True)
    args.folder = str(folder)
  if args.folder:
    listed = image_folder.open_folder(args.folder, ['train'])
    folder_split = loader.Split(image_folder.FolderSplit(*listed.splits['train'],
                                                         args.stored_size),
                                0, len(listed.splits['train'][0]))
  if store_path:
    prepared = store.open_store(pathlib.Path(store_path).expanduser())
    size = prepared.image_size
    source = prepared.source_of('train')
    split = loader.Split(source, 0, len(source))
    what = f'store {store_path} ({prepared.encoding}, {size}x{size})'
  else:
    size = args.stored_size
    split = loader.Split(synthetic.SyntheticSplit(synthetic.TRAIN, 12_800, size, 10), 0, 12_800)
    what = f'synthetic images ({size}x{size})'
  device = jax.local_devices()[0]
  print(f'jax {jax.__version__}, {jax.local_device_count()} x {device.device_kind}; '
        f'{loader.cores()} cores; {what}; {args.model} width {args.width}, '
        f'{args.dtype}, batch {args.batch}, patches of {args.image_size}; {workers} decoding '
        f'processes, {threads} threads in each', flush=True)
  rows = []
  measure = dict(batch=args.batch, steps=args.steps, warmup=args.warmup)
  # Without --store the input is the demo's generated images (made once, then kept).
  read = 'the store' if store_path else 'generated images'
  rows.append((f'input alone: {read}', *input_alone(split, size, workers=workers,
                                                      threads=threads, **measure)))
  print(rows[-1], flush=True)
  if folder_split is not None:
    rows.append(('input alone: JPEG files decoded and resized as read',
                 *input_alone(folder_split, args.stored_size, workers=workers,
                              threads=threads, **measure)))
    print(rows[-1], flush=True)
  step_rate = None
  if not args.input_only:
    step = Step(args, args.image_size)
    rows.append(('step alone (batch already on the devices)',
                 *step_alone(step, size, **measure)))
    print(rows[-1], flush=True)
    step_rate = rows[-1][1]
    rows.append((f'the loop: {read}, then the step',
                 *loop(step, split, size, workers=workers, threads=threads, **measure)))
    print(rows[-1], flush=True)
  print()
  print('| what | images/s | cores used | images/s per core used | of the step alone |')
  print('|---|---|---|---|---|')
  for name, rate, cores in rows:
    print(f'| {name} | {rate:,.0f} | {cores:.2f} | {rate / cores:,.0f} | '
          f'{f"{rate / step_rate:.1%}" if step_rate else "-"} |')


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  where = parser.add_mutually_exclusive_group()
  where.add_argument('--store', help='a prepared store (default: synthetic images)')
  where.add_argument('--fullsize_from', help='a train split folder (ROOT/train) whose images '
                     'are upscaled to 500x375 JPEGs and prepared into a store under --work')
  parser.add_argument('--work', default='/tmp/alexnet_benchmark_loop',
                      help='with --fullsize_from: where the JPEGs and the store go')
  parser.add_argument('--images', type=int, default=4000, help='with --fullsize_from')
  parser.add_argument('--folder', help='also time reading this image folder (ROOT with a '
                      'train/ split) without a store')
  parser.add_argument('--stored_size', type=int, default=256,
                      help='side of the stored images (synthetic, folder and prepared)')
  parser.add_argument('--image_size', type=int, default=224, help='the patch the model sees')
  parser.add_argument('--model', default='owt', choices=sorted(models.VARIANTS))
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--batch', type=int, default=128, help='global batch size')
  parser.add_argument('--workers', type=int, default=-1,
                      help='decoding processes; 0: in this process; -1: as the trainer picks')
  parser.add_argument('--threads', type=int, default=-1,
                      help='decoding threads per process; -1: as the trainer picks')
  parser.add_argument('--input_only', action='store_true', help='time the input rows only')
  parser.add_argument('--steps', type=int, default=20, help='timed batches or steps')
  parser.add_argument('--warmup', type=int, default=5)
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
