"""One round on a GPU host: what the GPU's JPEG decoders, several batches at once, and the
host's cores feed the training loop, in one table.

  python -m alexnet_jax.commands.benchmark_gpu_feed                # 1,000 photo-like images
  python -m alexnet_jax.commands.benchmark_gpu_feed --store=STORE  # any prepared JPEG store
  python -m alexnet_jax.commands.benchmark_gpu_feed --smoke        # on the CPU, stand-ins

Without --store it makes ~1,000 full-size photo-like JPEGs (`benchmarking/photo_like.py`) and
prepares them at 256x256 under --work (downscaled, never upscaled). Rows:
- the decoders alone, one batch of --batch rows after another: the hardware engines, nvJPEG's
  CUDA decoder with Huffman decoding on the host (its default for small images), and with it
  on the SMs (`hybrid_huffman_threshold=0`, the all-GPU path), with each one's largest and
  mean difference from libjpeg-turbo's pixels;
- K = 1..4 decoders at once, each on its own thread, at 128 and 256 rows (decoders built per
  size: the engines' share of a batch is fixed at a decoder's first call);
- the owt step alone, and beside 2 decoders decoding at once;
- for each model (owt, paper): the step alone; the loop with the host decoding every row, for
  each of --readings (processes x threads); today's one batch at a time with half of each
  device's rows on the host; K = 2 and 3 batches at once at the split measured for that K
  (`data/decode_share.py`);
- the input alone (no step): the host's, and K = 2 at its measured split.
Each with the cores it used (this process and its decoding processes). --smoke runs every row
on the CPU with tiny sizes, the stand-in decoder of `benchmarking/stand_in.py`, and a tiny
store: a check that the round runs, not a measurement.
"""

import argparse
import pathlib

import jax
import numpy as np

from alexnet_jax.benchmarking import gpu_feed, photo_like, stand_in, table, throughput
from alexnet_jax.benchmarking.throughput import Step, describe_reading
from alexnet_jax.data import decode_share, gpu_decode, image_source, loader, store, to_devices
from alexnet_jax.parallel import backend

# The paper model's rows run the same code as owt's: --smoke compiles one model.
SMOKE = dict(images=48, stored_size=72, image_size=64, width=0.125, batch=16, rows=[8, 16],
             lanes=[1, 2], steps=2, warmup=1, repeats=2, readings='0x1,0x2', dtype='float32',
             models=['owt'])


class Round:
  """The round's store, decoders and rows."""

  def __init__(self, args):
    self.args = args
    path = pathlib.Path(args.store or photo_like.prepare_store(
        pathlib.Path(args.work).expanduser(), args.images, args.stored_size)).expanduser()
    prepared = store.open_store(path)
    if prepared.encoding != 'jpeg':
      raise SystemExit(f'{path} stores raw pixels: the GPU decodes JPEGs only. Prepare it '
                       'with --encoding=jpeg.')
    self.size, source = prepared.image_size, prepared.source_of('train')
    self.split = image_source.Split(source, 0, len(source))
    self.jpegs = [np.frombuffer(source.jpeg(i)[1], np.uint8).copy()
                  for i in range(min(1024, len(source)))]
    self.device = jax.local_devices()[0]
    self.dtype = args.dtype or backend.compute_dtype('auto')
    workers, threads = loader.auto_resources()
    self.reading = loader.Reading(workers=workers, threads=threads)
    self.rows, self.splits, self.path, self._steps = [], {}, path, {}

  def step(self, model: str) -> Step:
    """The train step of `model`, compiled once for the round."""
    if model not in self._steps:
      self._steps[model] = Step(model, self.args.width, self.dtype, self.args.image_size)
    return self._steps[model]

  def decoders(self, count: int, devices=None, hardware_share: float = 1.0,
               huffman_on_gpu: bool = False) -> list:
    if self.args.smoke:
      return [stand_in.SleepingDecoder(self.args.stand_in_latency) for _ in range(count)]
    return [gpu_decode.GpuDecoder(devices or [self.device], self.size, hardware_share,
                                  huffman_on_gpu) for _ in range(count)]

  def add(self, what: str, rate: float, cores: float | None, step: float | None = None,
          note: str | None = None) -> None:
    self.rows.append((what, f'{rate:,.0f}', None if cores is None else f'{cores:.2f}',
                      f'{rate / step:.1%}' if step else None, note))
    print(self.rows[-1], flush=True)

  def measure(self, key: str, rate_and_cores, step=None, note=None) -> tuple[float, float]:
    rate, cores, *_ = rate_and_cores
    self.add(key, rate, cores, step, note)
    return rate, cores


def header(r: Round) -> None:
  versions = [f'jax {jax.__version__}']
  if r.args.smoke:
    versions.append('stand-in decoder (libjpeg-turbo, waits without the lock)')
    engines = 'none (stand-in)'
  else:
    nvimgcodec, cupy = gpu_decode._import()   # noqa: SLF001  (the module's one import point)
    versions += [f'nvImageCodec {nvimgcodec.__version__}', f'CuPy {cupy.__version__}',
                 f'CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}',
                 f'driver {cupy.cuda.runtime.driverGetVersion()}']
    engines = gpu_feed.hardware_engines()
  kib = np.mean([len(j) for j in r.jpegs]) / 1024
  print(f'{", ".join(versions)}; {jax.local_device_count()} x {r.device.device_kind}, JPEG '
        f'hardware: {engines}; {loader.cores()} cores; {len(r.split.source):,} JPEGs of '
        f'{r.size}x{r.size} in {r.path} ({kib:.1f} KiB on average); batch {r.args.batch}, '
        f'{r.dtype}; the trainer\'s decoding: {describe_reading(r.reading)}', flush=True)


def decoders_alone(r: Round) -> None:
  a = r.args
  for what, options in (('hardware engines', dict(hardware_share=1.0)),
                        ('CUDA decoder, Huffman on the host', dict(hardware_share=0.0)),
                        ('CUDA decoder, Huffman on the GPU (threshold 0)',
                         dict(hardware_share=0.0, huffman_on_gpu=True))):
    [decoder] = r.decoders(1, **options)
    rate, cores = gpu_feed.lanes_rate([decoder], r.device, r.jpegs, r.size, a.batch, a.repeats)
    largest, mean, share = gpu_feed.differences(decoder, r.device, r.jpegs, r.size, a.batch)
    r.add(f'decoder alone: {what}, {a.batch} rows', rate, cores,
          note=f'from libjpeg-turbo: {largest} at most, {mean:.3f} on average, {share:.1%} of '
               'channels differ')


def lanes_alone(r: Round) -> None:
  a = r.args
  for rows in a.rows:
    decoders = r.decoders(max(a.lanes))   # built for this size
    for k in a.lanes:
      r.measure(f'{k} decoder{"s" if k > 1 else ""} at once (hardware engines), {rows} rows',
                gpu_feed.lanes_rate(decoders[:k], r.device, r.jpegs, r.size, rows, a.repeats))


def beside_step(r: Round) -> None:
  a = r.args
  step = r.step('owt')
  alone = r.measure(f'owt step alone, batch {a.batch}', throughput.step_alone(
      step, r.size, a.batch, a.steps, a.warmup))[0]
  rate, decoded = gpu_feed.step_beside(step, r.decoders(2), r.device, r.jpegs, r.size,
                                       a.batch, a.steps, a.warmup)
  r.add('owt step beside 2 decoders at once', rate, None, alone,
        note=f'the decoders meanwhile: {decoded:,.0f} images/s')


def measured_split(r: Round, step: Step, k: int) -> tuple[float, str]:
  """(the host's share, a note) measured with `k` decoders at once, as the trainer does."""
  if k not in r.splits:
    put = to_devices.ToDevices(step.mesh, step.spec, decoders=r.decoders(k, jax.local_devices()),
                               host_batch=r.args.batch, host_share='auto')
    data = loader.make_data(r.split, r.split, name='round', num_classes=1000,
                            image_size=r.size, global_batch=r.args.batch, seed=0,
                            reading=r.reading)
    host, gpu = decode_share.measure(put, data, 0)
    rows = decode_share.split_rows(put.per_device, host, gpu)
    r.splits[k] = (rows / put.per_device,
                   f'host {host:,.0f}/s, GPU {gpu:,.0f}/s: {rows} of {put.per_device} rows '
                   'on the host')
  return r.splits[k]


def loops(r: Round, model: str) -> None:
  a = r.args
  step = r.step(model)
  alone = r.measure(f'{model}: step alone', throughput.step_alone(
      step, r.size, a.batch, a.steps, a.warmup))[0]
  measure = dict(batch=a.batch, num_steps=a.steps, warmup=a.warmup)
  for reading in a.readings:
    r.measure(f'{model}: the loop, the host decoding, {describe_reading(reading)}',
              throughput.loop(step, r.split, r.size, reading=reading, **measure), alone)
  devices = jax.local_devices()
  r.measure(f'{model}: the loop, one batch at a time, half the rows on the host',
            throughput.loop(step, r.split, r.size, reading=r.reading, host_share=0.5,
                            decoders=r.decoders(1, devices), **measure), alone)
  for k in a.overlapped:
    share, note = measured_split(r, step, k)
    r.measure(f'{model}: the loop, {k} batches at once, the measured split',
              throughput.loop(step, r.split, r.size, reading=r.reading, host_share=share,
                              decoders=r.decoders(k, devices), **measure), alone, note)


def input_alone(r: Round) -> None:
  a = r.args
  measure = dict(batch=a.batch, num_steps=a.steps, warmup=a.warmup)
  r.measure(f'input alone: the host decoding, {describe_reading(r.reading)}',
            throughput.input_alone(r.split, r.size, reading=r.reading, **measure))
  step = r.step('owt')
  k = a.overlapped[0]
  share, note = measured_split(r, step, k)
  r.measure(f'input alone: {k} batches at once, the measured split',
            throughput.input_to_devices(step, r.split, r.size, reading=r.reading,
                                        host_share=share,
                                        decoders=r.decoders(k, jax.local_devices()),
                                        **measure), note=note)


def main(args):
  r = Round(args)
  header(r)
  decoders_alone(r)
  lanes_alone(r)
  beside_step(r)
  for model in args.models:
    loops(r, model)
  input_alone(r)
  print()
  table.print_markdown(('what', 'images/s', 'cores used', 'of the step alone', 'note'), r.rows)


def _reading(text: str) -> loader.Reading:
  workers, threads = (int(n) for n in text.split('x'))
  return loader.Reading(workers=workers, threads=threads)


def _default_readings() -> str:
  """Threads on every core but one; 2 processes; a process per 4 cores (3 threads each)."""
  cores = loader.cores()
  choices = [f'0x{max(1, cores - 1)}', f'2x{max(1, (cores - 1) // 2)}',
             f'{max(1, cores // 4)}x3']
  return ','.join(dict.fromkeys(choices))


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  numbers = lambda text: [int(s) for s in text.split(',')]   # noqa: E731
  parser.add_argument('--store', help='a prepared store of JPEGs (default: photo-like ones '
                      'made under --work)')
  parser.add_argument('--work', default='/tmp/alexnet_gpu_feed')
  parser.add_argument('--images', type=int, default=1000)
  parser.add_argument('--stored_size', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=224, help='the patch the model sees')
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'))
  parser.add_argument('--batch', type=int, default=256, help='global batch size')
  parser.add_argument('--rows', type=numbers, default=[128, 256],
                      help='batch sizes of the K-decoders rows')
  parser.add_argument('--lanes', type=numbers, default=[1, 2, 3, 4])
  parser.add_argument('--overlapped', type=numbers, default=[2, 3],
                      help='batches at once of the loop rows')
  parser.add_argument('--models', type=lambda t: t.split(','), default=['owt', 'paper'])
  parser.add_argument('--readings', help='PROCESSESxTHREADS,... of the host-only loop rows '
                      '(default: threads on every core, 2 processes, a process per 4 cores)')
  parser.add_argument('--repeats', type=int, default=20, help='timed batches per decoder')
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--smoke', action='store_true',
                      help='on the CPU: tiny sizes, the stand-in decoder, a tiny store')
  parser.add_argument('--stand_in_latency', type=float, default=0.0005,
                      help='with --smoke: the stand-in decoder\'s wait per image, seconds')
  args = parser.parse_args(argv)
  if args.smoke:
    for key, value in SMOKE.items():
      setattr(args, key, value)
  args.readings = [_reading(t) for t in (args.readings or _default_readings()).split(',')]
  return args


if __name__ == '__main__':
  main(_parse_args())
