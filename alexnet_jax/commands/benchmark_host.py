"""One command that measures an accelerator host: its input, its step, the loop, the trainer.

  python -m alexnet_jax.commands.benchmark_host --work=/tmp/alexnet_host

Needs JAX for the host's accelerators and the project's requirements other than
TensorFlow and TFDS (grain, array_record, simplejpeg, clu, ml_collections, ...):
nothing it runs imports TensorFlow. In turn it
1. makes `--images` full-size photo-like JPEGs (`benchmarking/photo_like.py`: as
   large as real photos' JPEGs, and as slow to decode) and prepares a 256x256
   store of them, or reads `--store` (a store of real photos is better);
2. times the input alone: libjpeg-turbo on one thread, the loader with threads
   only, and the loader as the trainer reads (decoding processes on hosts of 8
   cores or more), each images/s and images/s per core used;
3. for each of `--models` and `--batch_sizes`, in the trainer's dtype for the
   platform: the step alone (a batch already on the devices) and the loop (the
   loader's batches copied to the devices on its background thread, trained
   on), and the training thread's CPU time per step; where `--gpu_decode` lists
   host shares (on a GPU host with the GPU decoder installed), the input and the
   loop again with the JPEGs decoded on the GPU, that share of each device's
   rows on the host;
4. runs `main.py` itself on the store for `--train_steps` steps with a
   checkpoint, then the same command with `--resume_steps` more, which resumes
   from it: images/s, the training thread's CPU per step and what a save cost the step,
   as the run's TensorBoard summaries hold them (it decodes on the host, or with
   `--gpu_decode` as its first share says).
Then it prints one table.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

# This process takes the GPU memory it uses, not JAX's default 75% of it: main.py runs beside
# it and needs its own.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
import jax  # noqa: E402  (after the variable above)

from alexnet_jax.benchmarking import photo_like, table, throughput
from alexnet_jax.data import gpu_decode, image_source, loader, store
from alexnet_jax.loop import summaries
from alexnet_jax.parallel import backend
from alexnet_jax.workdir import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[2]   # the repository: main.py, configs/


def run_main(workdir: pathlib.Path, store_path: pathlib.Path, model: str, steps: int,
             batch: int, log_every: int, extra: list[str]) -> dict:
  """main.py trained to `steps` on the store; its rates from its summaries."""
  command = [sys.executable, str(ROOT / 'main.py'), f'--config={ROOT}/configs/alexnet.py:{model}',
             f'--workdir={workdir}', f'--config.dataset={store_path}',
             f'--config.num_train_steps={steps}', f'--config.global_batch_size={batch}',
             f'--config.eval_every_steps={steps}', f'--config.log_every_steps={log_every}',
             f'--config.checkpoint_every_steps={steps}', '--config.keep_best_checkpoint=false',
             *extra]
  saved = pathlib.Path(checkpointing.folder(str(workdir)))
  resumed_from = max((int(p.name) for p in saved.iterdir() if p.name.isdigit()), default=None
                     ) if saved.is_dir() else None
  start = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    log = result.stdout + result.stderr
    raise RuntimeError(f'{" ".join(command)} failed ({result.returncode}):\n{log[-3000:]}')
  first = resumed_from or 0
  this_run = {tag: [value for step, value in points if step > first]
              for tag, points in summaries.read_scalars(str(workdir)).items()}
  # The first window of a run holds its compilation.
  rates = this_run.get('train/images_per_sec', [])
  host_ms = this_run.get('train/host_ms_per_step', [])
  return {'seconds': seconds,
          'images_per_sec': statistics.median(rates[1:] or rates) if rates else None,
          'host_ms': statistics.median(host_ms[1:] or host_ms) if host_ms else None,
          'save_s': this_run.get('train/checkpoint_wait_s', []),
          'resumed_from': resumed_from}


def main(args):
  work = pathlib.Path(args.work).expanduser()
  start = time.perf_counter()
  if args.store:
    store_path = pathlib.Path(args.store).expanduser()
  else:
    store_path = photo_like.prepare_store(work, args.images, args.stored_size)
  made = time.perf_counter() - start
  prepared = store.open_store(store_path)
  source = prepared.source_of('train')
  split = image_source.Split(source, 0, len(source))
  size = prepared.image_size
  dtype = args.dtype or backend.compute_dtype('auto')
  workers, threads = loader.auto_resources()
  trainers = loader.Reading(workers=workers, threads=threads)
  device = jax.local_devices()[0]
  print(f'{jax.local_device_count()} x {device.device_kind}, {loader.cores()} cores, jax '
        f'{jax.__version__}; {len(source):,} images of {store_path} ({made:.0f} s to make and '
        f'prepare); {dtype}; the trainer decodes with {throughput.describe_reading(trainers)}.',
        flush=True)
  rows = []

  def row(what, rate=None, cores=None, of_step=None, host_ms=None, note=''):
    rows.append((what, rate, cores, of_step, host_ms, note))
    print(rows[-1], flush=True)

  readings = [loader.Reading(workers=0, threads=loader.cores())]
  if trainers.workers > 0:
    readings.append(trainers)
  for reading, (rate, cores) in throughput.compare_inputs(
      split, size, args.input_batch, readings, rounds=2, num_steps=args.steps, warmup=args.warmup,
      decode=source).items():
    if reading == throughput.DECODE_ALONE:
      what = 'decode alone: the stored JPEGs, one thread'
    elif reading == throughput.DECODE_EVERY_CORE:
      what = f'decode alone: {loader.cores()} processes at once'
    else:
      what = f'input alone: {throughput.describe_reading(reading)}'
    row(what, rate, cores)
  for model in args.models.split(','):
    for batch in (int(b) for b in args.batch_sizes.split(',')):
      step = throughput.Step(model, args.width, dtype, args.image_size)
      measure = dict(batch=batch, num_steps=args.steps, warmup=args.warmup)
      step_rate, cores, host_ms = throughput.step_alone(step, size, **measure)
      row(f'{model}, batch {batch}: step alone', step_rate, cores, None, host_ms)
      rate, cores, host_ms = throughput.loop(step, split, size, reading=trainers, **measure)
      row(f'{model}, batch {batch}: the loop', rate, cores, rate / step_rate, host_ms)
      for share in args.gpu_decode:
        decoder = gpu_decode.GpuDecoder(jax.local_devices(), size, args.hardware_share)
        on_host = f', {share:.0%} of the rows on the host' if share else ''
        rate, cores, _ = throughput.input_to_devices(step, split, size, reading=trainers,
                                                         decoder=decoder, host_share=share,
                                                         **measure)
        row(f'{model}, batch {batch}: input alone, decoded on the GPU{on_host}', rate, cores)
        rate, cores, host_ms = throughput.loop(step, split, size, reading=trainers,
                                                   decoder=decoder, host_share=share, **measure)
        row(f'{model}, batch {batch}: the loop, decoded on the GPU{on_host}', rate, cores,
            rate / step_rate, host_ms)
      del step
  workdir = work / 'main_run'
  if workdir.exists():
    subprocess.run(['rm', '-rf', str(workdir)], check=True)
  model, batch = args.models.split(',')[0], int(args.batch_sizes.split(',')[0])
  extra = [f'--config.width={args.width}', f'--config.image_size={args.image_size}',
           f'--config.resize_size={size}']
  decoding = 'on the host'
  if args.gpu_decode:   # as the first share of the GPU rows above
    extra += ['--config.decode=device', f'--config.decode_host_share={args.gpu_decode[0]}',
              f'--config.decode_hardware_share={args.hardware_share}']
    decoding = f'on the GPU, {args.gpu_decode[0]:.0%} of the rows on the host'
  for steps in (args.train_steps, args.train_steps + args.resume_steps):
    result = run_main(workdir, store_path, model, steps, batch, args.log_every, extra)
    resumed = result['resumed_from']
    saves = ', '.join(f'{s:.2f}' for s in result['save_s'])
    row(f'main.py, {model}, batch {batch}, to step {steps}'
        f'{f" (resumed from {resumed})" if resumed else ""}', result['images_per_sec'], None,
        None, result['host_ms'], f'{result["seconds"]:.0f} s in all; JPEGs decoded {decoding}; '
        f'the step waited {saves or "-"} s for its saves')
  print()
  table.print_markdown(
      ('what', 'images/s', 'cores used', 'of the step alone', 'training thread, CPU ms per step',
       ''),
      [(what, f'{rate:,.0f}' if rate else None, f'{cores:.2f}' if cores else None,
        f'{of_step:.1%}' if of_step else None,
        f'{host_ms:.2f}' if host_ms is not None else None, note)
       for what, rate, cores, of_step, host_ms, note in rows])
  print(f'\n{time.perf_counter() - start:.0f} s in all.')


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--work', default='/tmp/alexnet_benchmark_host',
                      help='where the images, the store and the run go')
  parser.add_argument('--store', help='a prepared store to read (default: make photo-like '
                      'images and prepare one)')
  parser.add_argument('--images', type=int, default=8000, help='photo-like training images')
  parser.add_argument('--gpu_decode', type=lambda t: [float(s) for s in t.split(',')],
                      default=[], help='host shares of the GPU-decoding rows, e.g. 0,0.25')
  parser.add_argument('--hardware_share', type=float, default=1.0,
                      help="with --gpu_decode: the share of the GPU's rows its hardware "
                           'decoders take')
  parser.add_argument('--stored_size', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--models', default='owt,paper')
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--batch_sizes', default='256,1024', help='global batch sizes')
  parser.add_argument('--input_batch', type=int, default=256,
                      help='the batch of the input-alone rows')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'),
                      help="default: the trainer's on this platform")
  parser.add_argument('--steps', type=int, default=50, help='timed steps or batches per row')
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--train_steps', type=int, default=300,
                      help='main.py trains this far, saves, then resumes')
  parser.add_argument('--resume_steps', type=int, default=100)
  parser.add_argument('--log_every', type=int, default=50)
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
