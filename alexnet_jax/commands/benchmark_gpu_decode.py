"""JPEG decoding on the GPU by itself: each of nvImageCodec's decoders on a store's JPEGs, what
it costs a train step running beside it, and how far its pixels are from libjpeg-turbo's.

  python -m alexnet_jax.commands.benchmark_gpu_decode --store=STORE [--batches=256,1024]

Rows, for each batch size:
- each decoder alone (`gpu_decode.GpuDecoder`, as the trainer runs it: one batch into one
  buffer on the GPU, then a JAX array): the hardware decoders taking every image they can, the
  CUDA decoder alone, and both with the hardware decoders taking each `--hardware_shares`;
- the train step alone, and with the decoder decoding batch after batch on another thread.
Then, over every image of the store, the largest and the mean difference per pixel channel
between each GPU decoder's pixels and libjpeg-turbo's (simplejpeg, the host's decoder), and
a check of the trainer's path: the loader's batches put on the devices with a quarter of
each device's rows decoded on the host and the rest on the GPU, against the host's batches.
Runs on a GPU host with the GPU decoder installed (README, "Install"); imports no TensorFlow.
"""

import argparse
import pathlib
import threading
import time

import jax
import numpy as np

from alexnet_jax.benchmarking import table, throughput
from alexnet_jax.benchmarking.gpu_feed import differences
from alexnet_jax.data import gpu_decode, image_source, loader, store, to_devices
from alexnet_jax.parallel import backend, placement


def _jpegs(path: str, count: int) -> tuple[list[np.ndarray], int]:
  """The first `count` stored JPEGs of the store's train split (cycled), and their side."""
  prepared = store.open_store(pathlib.Path(path).expanduser())
  if prepared.encoding != 'jpeg':
    raise SystemExit(f'{path} stores raw pixels: the GPU decodes JPEGs only.')
  source = prepared.source_of('train')
  stored = [np.frombuffer(source.jpeg(i)[1], np.uint8).copy()
            for i in range(min(count, len(source)))]
  return stored, prepared.image_size


def decode_rate(decoder, device, jpegs, size: int, batch: int, repeats: int) -> float:
  """Images/s of `decoder` decoding batches of `batch` of `jpegs`, every row on the GPU."""
  pixels = np.zeros((batch, size, size, 3), np.uint8)
  index = np.arange(batch)
  batches = [{row: jpegs[(start + row) % len(jpegs)] for row in range(batch)}
             for start in range(0, batch * 2, batch)]
  jax.block_until_ready(decoder.decode(device, pixels, batches[0], index))   # warm-up
  begin = time.perf_counter()
  for r in range(repeats):
    out = decoder.decode(device, pixels, batches[r % 2], index)
  jax.block_until_ready(out)
  return batch * repeats / (time.perf_counter() - begin)


def step_with_decoding(step, decoder, device, jpegs, size: int, batch: int, steps: int,
                       warmup: int) -> tuple[float, float]:
  """(the step's images/s, the decoder's images/s) with both running at once."""
  done, decoded = threading.Event(), [0]
  pixels, index = np.zeros((batch, size, size, 3), np.uint8), np.arange(batch)
  rows = {row: jpegs[row % len(jpegs)] for row in range(batch)}

  def decode_on():
    while not done.is_set():
      jax.block_until_ready(decoder.decode(device, pixels, rows, index))
      decoded[0] += batch

  thread = threading.Thread(target=decode_on, daemon=True)
  thread.start()
  begin = time.perf_counter()
  rate = throughput.step_alone(step, size, batch, steps, warmup)[0]
  decode_rate_ = decoded[0] / (time.perf_counter() - begin)
  done.set()
  thread.join()
  return rate, decode_rate_


def check_trainers_path(path: str, decoder, batch: int, steps: int = 3) -> tuple[int, int]:
  """(largest difference on the GPU's rows, on the host's rows) between the loader's batches
  put on the devices with `decoder` decoding 3/4 of each device's rows, and the host's."""
  prepared = store.open_store(pathlib.Path(path).expanduser())
  source = prepared.source_of('train')
  split = image_source.Split(source, 0, len(source))
  data = loader.make_data(split, split, name=path, num_classes=len(prepared.classes),
                          image_size=prepared.image_size, global_batch=batch, seed=0,
                          reading=loader.Reading(workers=0, threads=4))
  mesh = placement.make_mesh()
  put = to_devices.ToDevices(mesh, decoder=decoder, host_batch=batch, host_share=0.25)
  on_gpu = data.train_batches(0, put=put, split=put.decode_split)
  on_host = data.train_batches(0)
  gpu_rows = put.decode_split.on_device(batch)
  largest = {True: 0, False: 0}
  try:
    for _ in range(steps):
      got, want = np.asarray(next(on_gpu)['image']), next(on_host).image
      diff = np.abs(got.astype(np.int16) - want.astype(np.int16)).max(axis=(1, 2, 3))
      for where in (True, False):
        largest[where] = max(largest[where], int(diff[gpu_rows == where].max()))
  finally:
    on_gpu.close()
    on_host.close()
  return largest[True], largest[False]


def main(args):
  device = jax.local_devices()[0]
  jpegs, size = _jpegs(args.store, args.images)
  dtype = backend.compute_dtype('auto')
  print(f'jax {jax.__version__}, {device.device_kind}; {len(jpegs)} JPEGs of {size}x{size} from '
        f'{args.store}, {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB on average',
        flush=True)
  decoders = {'hardware decoders (all they take)': 1.0,
              'CUDA decoder alone (Huffman on the host)': 0.0}
  decoders.update({f'both, {share:.0%} on the hardware': share
                   for share in args.hardware_shares})
  rows = []
  for batch in args.batches:
    # The engines' share of a batch is fixed at a decoder's first call: decoders per size.
    built = {name: gpu_decode.GpuDecoder([device], size, share)
             for name, share in decoders.items()}
    for name, decoder in built.items():
      rows.append((batch, f'decode alone: {name}',
                   decode_rate(decoder, device, jpegs, size, batch, args.repeats)))
      print(rows[-1], flush=True)
    step = throughput.Step(args.model, 1.0, dtype, args.image_size)
    alone = throughput.step_alone(step, size, batch, args.steps, args.warmup)[0]
    rows.append((batch, f'train step alone ({args.model}, {dtype})', alone))
    print(rows[-1], flush=True)
    for name in args.beside:
      share = decoders[name] if name in decoders else float(name)
      decoder = gpu_decode.GpuDecoder([device], size, share)
      step_rate, decoded = step_with_decoding(step, decoder, device, jpegs, size, batch,
                                              args.steps, args.warmup)
      rows.append((batch, f'train step, decoding beside it ({share:.0%} on the hardware)',
                   step_rate, decoded, step_rate / alone))
      print(rows[-1], flush=True)
  print()
  table.print_markdown(
      ('batch', 'what', 'images/s', 'decoded beside, images/s', 'step of the step alone'),
      [(batch, what, f'{rate:,.0f}', *((f'{beside[0]:,.0f}', f'{beside[1]:.1%}') if beside
                                       else (None, None)))
       for batch, what, rate, *beside in rows])
  print()
  compared = []
  for name in ('hardware decoders (all they take)', 'CUDA decoder alone (Huffman on the host)'):
    largest, mean, share = differences(built[name], device, jpegs, size)
    compared.append((name, largest, f'{mean:.3f}', f'{share:.1%}'))
  table.print_markdown(('decoder', 'largest difference', 'mean difference',
                        'channels that differ'), compared)
  on_gpu, on_host = check_trainers_path(
      args.store, built['CUDA decoder alone (Huffman on the host)'], 256)
  print(f'\nThe trainer\'s path, 3 batches of 256, a quarter of the rows decoded on the host: '
        f'largest difference from the host\'s batches {on_gpu} on the GPU\'s rows, {on_host} '
        'on the host\'s rows.')


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--store', required=True, help='a prepared store of JPEGs')
  parser.add_argument('--images', type=int, default=1024, help='JPEGs read from the store')
  parser.add_argument('--batches', type=lambda t: [int(s) for s in t.split(',')],
                      default=[256, 1024])
  parser.add_argument('--hardware_shares', type=lambda t: [float(s) for s in t.split(',')],
                      default=[0.5, 0.65, 0.8])
  parser.add_argument('--beside', type=lambda t: t.split(','), default=['0.65'],
                      help='hardware shares of the decoders run beside the step')
  parser.add_argument('--repeats', type=int, default=20, help='timed batches per decoder')
  parser.add_argument('--model', default='owt')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=5)
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
