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
- step alone: the trainer's train step (`per_device.make_train_step`, the paper's
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
real photos: without a store of them, `--photo_like=N` makes N full-size images
whose JPEGs are as large as real photos' and prepares a store of them
(`alexnet_jax/benchmarking/photo_like.py`). What it measures with is
`alexnet_jax/benchmarking/`; like it, it imports no TensorFlow, clu or
ml_collections.
"""

import argparse
import pathlib

import jax
import numpy as np

from alexnet_jax import models
from alexnet_jax.benchmarking import photo_like, table, throughput
from alexnet_jax.benchmarking.throughput import (DECODE_ALONE, DECODE_EVERY_CORE, Step,
                                                 compare_inputs, describe_reading,
                                                 input_alone, input_to_devices, loop,
                                                 step_alone)
from alexnet_jax.data import gpu_decode, image_folder, image_source, loader, store, synthetic
from alexnet_jax.parallel import backend


def _reading(text: str) -> loader.Reading:
  workers, threads = (int(n) for n in text.split('x'))
  return loader.Reading(workers=workers, threads=threads)


def main(args):
  workers, threads = loader.auto_resources(args.workers, args.threads)
  trainers_reading = loader.Reading(workers=workers, threads=threads)
  readings = ([_reading(r) for r in args.readings.split(',')] if args.readings else
              [loader.Reading(workers=0, threads=loader.cores()),
               loader.Reading(workers=2, threads=max(1, (loader.cores() - 1) // 2))
               if workers == 0 else trainers_reading])
  store_path = args.store
  if args.photo_like:
    store_path = str(photo_like.prepare_store(pathlib.Path(args.work).expanduser(), args.photo_like,
                                        args.stored_size))
  dtype = args.dtype or backend.compute_dtype('auto')
  rows, measure = [], dict(batch=args.batch, num_steps=args.steps, warmup=args.warmup)
  if store_path:
    prepared = store.open_store(pathlib.Path(store_path).expanduser())
    size, source = prepared.image_size, prepared.source_of('train')
    split = image_source.Split(source, 0, len(source))
    sizes = [len(r) for r in throughput.records_of(source, 1000)]
    what = (f'store {store_path} ({len(source):,} {prepared.encoding} images of {size}x{size}, '
            f'{np.mean(sizes) / 1024:.1f} KiB on average)')
    read = 'the store'
  else:
    size = args.stored_size
    generated = synthetic.SyntheticSplit(synthetic.TRAIN, 12_800, size, 10)
    split = image_source.Split(generated, 0, len(generated))
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
    folder_split = image_source.Split(image_folder.FolderSplit(*listed.splits['train'],
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
  table.print_markdown(
      ('what', 'images/s', 'cores used', 'images/s per core used', 'of the step alone',
       'training thread, CPU ms per step'),
      [(name, f'{rate:,.0f}', f'{cores:.2f}', f'{rate / cores:,.0f}',
        f'{rate / step_rate:.1%}' if step_rate and host_ms is not None else None,
        f'{host_ms:.2f}' if host_ms is not None else None)
       for name, rate, cores, host_ms in rows])


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
