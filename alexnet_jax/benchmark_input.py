"""Input-pipeline throughput on real JPEGs: `python -m alexnet_jax.benchmark_input`.

Times the trainer's own per-image training preprocessing (`preprocessing.train_example`:
decode of the crop window only, resize, reflection, PCA colour shift) in tf.data with
batching, on JPEG files under a folder (by default ../shared/data/imagenette/train),
for 1 thread and for every core. Beside it, a plain Pillow loop does the same work
(decode, shorter side to 256, centre square, random patch, reflection, colour shift,
stacking) on one core. It reports images/s, the cores the process kept busy (its CPU
time over wall time) and images/s per core used.

  python -m alexnet_jax.benchmark_input --root=../shared/data/imagenette/train --images=2000
"""

import argparse
import os
import pathlib
import resource
import time

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _files(root: str, limit: int) -> list[str]:
  files = sorted(str(p) for p in pathlib.Path(root).rglob('*')
                 if p.suffix.lower() in ('.jpeg', '.jpg', '.png'))
  if not files:
    raise SystemExit(f'No JPEG or PNG files under {root}: pass --root=FOLDER.')
  return files[:limit]


class _Clock:
  """Wall time, and the cores used: this process's CPU time (all threads) over wall time."""

  def __enter__(self):
    self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self._wall
    self.cores = (_cpu_seconds() - self._cpu) / self.wall


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def tf_data_images_per_s(files, config, threads: int, batch: int) -> float:
  import tensorflow as tf
  from alexnet_jax import preprocessing

  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  base_seed = tf.constant([0, 0], tf.int64)

  def example(index, path):
    seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    return preprocessing.train_example(seed, {'image': tf.io.read_file(path), 'label': 0}, config)

  ds = (tf.data.Dataset.from_tensor_slices(files).enumerate()
        .map(example, num_parallel_calls=threads).batch(batch)
        .prefetch(2).with_options(options))
  for _ in ds.take(1):   # build the pipeline and warm the file cache
    pass
  with _Clock() as clock:
    count = sum(b['image'].shape[0] for b in ds.as_numpy_iterator())
  return count / clock.wall, clock.cores


def pillow_images_per_s(files, config, batch: int) -> float:
  from PIL import Image
  rng = np.random.default_rng(0)
  size, resize = config.image_size, config.resize_size
  images, shifts = [], []
  clock = _Clock().__enter__()
  for path in files:
    with Image.open(path) as image:
      image = image.convert('RGB')
      scale = resize / min(image.size)
      image = image.resize((max(resize, round(image.width * scale)),
                            max(resize, round(image.height * scale))), Image.BILINEAR)
      left, top = (image.width - resize) // 2, (image.height - resize) // 2
      x, y = rng.integers(0, resize - size + 1, 2)
      image = image.crop((left + x, top + y, left + x + size, top + y + size))
      if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      images.append(np.asarray(image))
      alpha = rng.normal(0, config.pca_lighting_std, 3)
      shifts.append(np.asarray(config.pca_eigvec) @ (alpha * np.asarray(config.pca_eigval)))
    if len(images) == batch:
      np.stack(images), np.stack(shifts)
      images, shifts = [], []
  clock.__exit__()
  return len(files) / clock.wall, clock.cores


def main(args):
  from configs import alexnet
  config = alexnet.get_config('paper')
  files = _files(args.root, args.images)
  cores = len(os.sched_getaffinity(0))
  print(f'{len(files)} images from {args.root}; {cores} cores; batch {args.batch}')
  rows = []
  for threads in sorted({1, cores}):
    rows.append(("tf.data, the trainer's preprocessing", threads,
                 *tf_data_images_per_s(files, config, threads, args.batch)))
    print(rows[-1], flush=True)
  rows.append(('Pillow loop, same work', 1, *pillow_images_per_s(files, config, args.batch)))
  print()
  print('| pipeline | threads | images/s | cores used | images/s per core used |')
  print('|---|---|---|---|---|')
  for name, threads, rate, used in rows:
    print(f'| {name} | {threads} | {rate:.0f} | {used:.2f} | {rate / used:.0f} |')


def _parse_args():
  here = pathlib.Path(__file__).resolve().parents[1]
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--root', default=str(here.parent / 'shared/data/imagenette/train'))
  parser.add_argument('--images', type=int, default=2000, help='how many files to read')
  parser.add_argument('--batch', type=int, default=128)
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
