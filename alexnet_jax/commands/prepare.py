"""Writes a dataset once in the paper's form, as a store the trainer reads fast.

  python -m alexnet_jax.commands.prepare --source=imagenet2012 --manual_dir=~/imagenet
  python -m alexnet_jax.commands.prepare --source=image_folder:../shared/data/imagenette --size=110

Every image becomes RGB with its shorter side resized to `--size` (256, the
paper's) and its centre `--size` x `--size` square kept, stored as a JPEG of
`--quality` or as raw pixels (`--encoding=raw`), in ArrayRecord shards with the
labels, class names and split sizes (`store.py`).

Sources:
- `image_folder:ROOT`: ROOT/train/<class>/*, ROOT/val/<class>/* (`image_folder.py`).
- any TFDS image-classification dataset by name, in any file format; it is
  built first if it is not yet (`--tfds_data_dir`). ImageNet (`imagenet2012`)
  is built from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
  `--manual_dir`.

The shards are written by `--workers` processes (all cores by default), with a
progress bar. An interrupted run keeps its finished shards: run the same
command again and it writes only the rest. The same input gives the same bytes.
Files that cannot be decoded are logged with their paths and left out. The
store is complete when its metadata.json is written, last.
"""

import pathlib
import sys
import time

from etils import epath

from alexnet_jax.data import image_files, store
from alexnet_jax.data.prepare import Options, default_out, prepare
from alexnet_jax.errors import DataError


def main(argv):
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  out = FLAGS.out or default_out(FLAGS.source, FLAGS.size)
  options = Options(size=FLAGS.size, encoding=FLAGS.encoding, quality=FLAGS.quality,
                    images_per_shard=FLAGS.images_per_shard, workers=FLAGS.workers,
                    limits=image_files.Limits(FLAGS.max_image_bytes, FLAGS.max_image_pixels))
  start = time.monotonic()
  try:
    prepared = prepare(FLAGS.source, out, options, FLAGS.splits, manual_dir=FLAGS.manual_dir,
                       tfds_data_dir=FLAGS.tfds_data_dir,
                       imagenet_wnid_labels=FLAGS.imagenet_wnid_labels)
  except DataError as e:
    sys.exit(f'error: {e}')
  sizes = ', '.join(f'{name} {prepared.examples(name):,}' for name in prepared.split_names())
  print(f'{out}: {sizes} images of {options.size}x{options.size} ({options.encoding}), '
        f'{len(prepared.classes)} classes, in {time.monotonic() - start:.0f} s.')
  from alexnet_jax import data
  name = pathlib.Path(out).name
  dataset = name if data.store_path(name, None) == epath.Path(out).expanduser() else out
  print(f'Train on it with --config.dataset={dataset} --config.resize_size={options.size}')


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('source', None, 'image_folder:ROOT, or a TFDS dataset name '
                      '(e.g. imagenet2012).')
  flags.DEFINE_string('out', None, 'The store folder; default ~/alexnet_jax_data/NAME '
                      '(NAME_SIZE for a size other than 256).')
  flags.DEFINE_integer('size', 256, 'Side of the stored square images (the paper: 256).')
  flags.DEFINE_enum('encoding', 'jpeg', store.ENCODINGS, 'JPEG, or raw uint8 pixels.')
  flags.DEFINE_integer('quality', 90, 'JPEG quality.')
  flags.DEFINE_list('splits', ['train', 'validation'], 'The splits to prepare.')
  flags.DEFINE_integer('workers', -1, 'Processes; -1: one per core, 0: this process alone.')
  flags.DEFINE_integer('images_per_shard', 1024, 'Images per ArrayRecord shard.')
  flags.DEFINE_string('manual_dir', None, 'TFDS datasets downloaded by hand (ImageNet): the '
                      'folder with their files.')
  flags.DEFINE_string('tfds_data_dir', None, "TFDS's data_dir for building a TFDS dataset; "
                      'default TFDS\'s own.')
  flags.DEFINE_bool('imagenet_wnid_labels', False, 'image_folder: class folders named by '
                    'ImageNet wnids take their ImageNet-1k index.')
  flags.DEFINE_integer('max_image_bytes', image_files.MAX_BYTES, 'image_folder: a larger file is '
                       'skipped unread, and named.')
  flags.DEFINE_integer('max_image_pixels', image_files.Limits().max_pixels, 'A larger image is '
                       'skipped from its header, undecoded, and named.')
  flags.mark_flags_as_required(['source'])
  app.run(main)
