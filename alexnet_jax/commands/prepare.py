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

import concurrent.futures
import dataclasses
import json
import logging
import math
import multiprocessing
import pathlib
import sys
import time

from etils import epath

from alexnet_jax.data import decode, image_folder, loader, splits, store
from alexnet_jax.errors import DataError

_counter = None   # images done, shared by the worker processes


@dataclasses.dataclass(frozen=True)
class Options:
  size: int = 256
  encoding: str = 'jpeg'
  quality: int = 90
  images_per_shard: int = 1024
  workers: int = -1          # processes; -1: one per core, 0: this process alone


@dataclasses.dataclass(frozen=True)
class FolderReader:
  """Listed files of a folder split: (encoded bytes, label, path) of each."""
  paths: tuple
  labels: tuple

  def read(self):
    for path, label in zip(self.paths, self.labels):
      try:
        encoded = pathlib.Path(path).read_bytes()
      except OSError as e:
        yield None, label, f'{path} ({e.strerror})'
        continue
      yield encoded, label, path


@dataclasses.dataclass(frozen=True)
class TfdsReader:
  """Examples [start, stop) of a prepared TFDS split, their images still encoded."""
  name: str
  data_dir: str | None
  split: str
  start: int = 0
  stop: int = 0

  def read(self):
    import tensorflow_datasets as tfds
    start, stop = self.start, self.stop
    builder = tfds.builder(self.name, data_dir=self.data_dir)
    decoders = {'image': tfds.decode.SkipDecoding()}
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
      examples = builder.as_data_source(self.split, decoders=decoders)
      rows = (examples[i] for i in range(start, stop))
    else:
      rows = builder.as_dataset(split=f'{self.split}[{start}:{stop}]', decoders=decoders,
                                shuffle_files=False).as_numpy_iterator()
    for i, row in enumerate(rows, start):
      name = row.get('file_name', b'')
      name = name.decode() if isinstance(name, bytes) else str(name)
      yield row['image'], int(row['label']), f'{self.name}:{self.split}[{i}] {name}'.strip()


@dataclasses.dataclass(frozen=True)
class Shard:
  """Images [start, stop) of a split, written as shard `index` of `count`."""
  out: str
  split: str
  index: int
  count: int
  start: int
  stop: int
  reader: FolderReader | TfdsReader   # reads exactly those images

  @property
  def path(self) -> epath.Path:
    return epath.Path(self.out) / store.shard_name(self.split, self.index, self.count)

  @property
  def summary_path(self) -> epath.Path:
    return self.path.with_suffix('.json')


def write_shard(shard: Shard, options: Options) -> dict:
  """Writes one shard (to a temporary name, renamed when whole); its summary."""
  from array_record.python import array_record_module
  temporary = shard.path.parent / (shard.path.name + '.tmp')
  writer = array_record_module.ArrayRecordWriter(str(temporary), store.WRITER_OPTIONS)
  examples, skipped = 0, []
  try:
    for encoded, label, name in shard.reader.read():
      try:
        if encoded is None:
          raise decode.UndecodableImage('cannot be read')
        image = decode.square(bytes(encoded), options.size)
      except decode.UndecodableImage as e:
        skipped.append(f'{name}: {e}')
        continue
      finally:
        _count_one()
      writer.write(store.encode_record(label, image, options.encoding, options.quality))
      examples += 1
  finally:
    writer.close()
  summary = {'examples': examples, 'skipped': skipped}
  shard.summary_path.write_text(json.dumps(summary, indent=1))
  temporary.rename(shard.path)   # the shard counts as written only now
  return summary


def _count_one():
  if _counter is not None:
    with _counter.get_lock():
      _counter.value += 1


def _init_worker(counter):
  global _counter
  _counter = counter


def _open_source(source: str, split_names, *, manual_dir, tfds_data_dir, imagenet_wnid_labels):
  """(classes, {split: (examples, reader_of(start, stop))}) of the source."""
  if source.startswith(image_folder.PREFIX):
    folder = image_folder.open_folder(source[len(image_folder.PREFIX):], split_names,
                                      imagenet_wnid_labels)

    def folder_reader(paths, labels):
      return lambda start, stop: FolderReader(tuple(paths[start:stop]),
                                              tuple(int(x) for x in labels[start:stop]))

    return folder.classes, {name: (len(paths), folder_reader(paths, labels))
                            for name, (paths, labels) in folder.splits.items()}
  builder = _tfds_builder(source, manual_dir, tfds_data_dir)
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise DataError(f'The TFDS dataset {source!r} has the features {sorted(features)}, not an '
                    "'image' and a 'label': only image-classification datasets can be prepared.")
  available = sorted(builder.info.splits)
  missing = [name for name in split_names if name not in builder.info.splits]
  if missing:
    raise DataError(f'The TFDS dataset {source!r} has no split {missing[0]!r}; it has '
                    f'{available}: pass --splits=NAMES from those.')
  return tuple(features['label'].names), {
      name: (builder.info.splits[name].num_examples,
             lambda start, stop, name=name: TfdsReader(source, tfds_data_dir, name, start, stop))
      for name in split_names}


def _tfds_builder(name: str, manual_dir, data_dir):
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f'No TFDS dataset is called {name!r}, and it does not start with '
                    f'{image_folder.PREFIX}: name a TFDS image-classification dataset '
                    '(e.g. imagenet2012) or a folder.') from e
  if not builder.is_prepared():
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
      raise DataError(f'{name} must be downloaded by hand, then passed with --manual_dir:\n'
                      f'{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    logging.info('Building the TFDS dataset %s in %s first (TFDS does this on one core).',
                 name, builder.data_dir)
    config = tfds.download.DownloadConfig(
        manual_dir=str(epath.Path(manual_dir).expanduser()) if manual_dir else None)
    try:
      builder.download_and_prepare(download_config=config)
    except AssertionError as e:   # TFDS's way of saying the manual files are not there
      raise DataError(f'TFDS could not build {name}: {e}\n'
                      f'{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}') from e
  return builder


def default_out(source: str, size: int, data_dir: str | None = None) -> str:
  """DATA_DIR/NAME: the TFDS name or the folder's name, with _SIZE unless it is 256."""
  from alexnet_jax import data
  if source.startswith(image_folder.PREFIX):
    name = pathlib.Path(source[len(image_folder.PREFIX):]).expanduser().resolve().name
  else:
    name = source.split(':')[0].split('/')[0]
  return str(data.store_path(name if size == 256 else f'{name}_{size}', data_dir))


def prepare(source: str, out: str, options: Options, split_names=('train', 'validation'), *,
            manual_dir=None, tfds_data_dir=None, imagenet_wnid_labels=False,
            progress: bool = True) -> store.Store:
  """Prepares `source` into the store `out`, or finishes a preparation that was stopped."""
  if options.encoding not in store.ENCODINGS:
    raise DataError(f'--encoding={options.encoding}: choose one of {store.ENCODINGS}.')
  if not 1 <= options.quality <= 100 or options.size < 1 or options.images_per_shard < 1:
    raise DataError('--quality must be 1-100, --size and --images_per_shard positive.')
  for name in split_names:
    sliced = splits.parse(name)
    if sliced.start or sliced.stop:
      raise DataError(f'--splits: {name} has a slice; prepare whole splits and slice them in '
                      'training (--config.train_split=train[:90%]).')
  out_path = epath.Path(out).expanduser()
  if store.is_complete(out_path):
    existing = store.open_store(out_path)
    logging.info('%s is already a complete store (of %s); nothing to do.', out, existing.source)
    return existing
  classes, readers = _open_source(source, list(split_names), manual_dir=manual_dir,
                                  tfds_data_dir=tfds_data_dir,
                                  imagenet_wnid_labels=imagenet_wnid_labels)
  out_path.mkdir(parents=True, exist_ok=True)
  shards = []
  for name, (examples, reader_of) in readers.items():
    count = max(1, math.ceil(examples / options.images_per_shard))
    bounds = [(examples * i // count, examples * (i + 1) // count) for i in range(count)]
    shards += [Shard(str(out_path), name, i, count, start, stop, reader_of(start, stop))
               for i, (start, stop) in enumerate(bounds)]
  todo = [s for s in shards if not s.path.exists()]
  if len(todo) < len(shards):
    logging.info('%d of %d shards are already written; writing the other %d.',
                 len(shards) - len(todo), len(shards), len(todo))
  summaries = _write_all(todo, options, progress)
  for shard in shards:
    if shard.path.name not in summaries:
      summaries[shard.path.name] = json.loads(shard.summary_path.read_text())
  split_metadata = {}
  for name in readers:
    own = [summaries[s.path.name] for s in shards if s.split == name]
    skipped = [line for summary in own for line in summary['skipped']]
    split_metadata[name] = {'examples': sum(summary['examples'] for summary in own),
                            'shards': [s.path.name for s in shards if s.split == name],
                            'skipped': skipped}
    if skipped:
      logging.warning('%s: %d images left out, as they cannot be decoded (listed above and in '
                      'metadata.json).', name, len(skipped))
  store.write_metadata(out_path, source=source, image_size=options.size,
                       encoding=options.encoding, quality=options.quality, classes=classes,
                       splits=split_metadata)
  return store.open_store(out_path)


def _write_all(shards: list, options: Options, progress: bool) -> dict:
  """{shard file name: summary} of the shards written, by worker processes or in this one."""
  total = sum(s.stop - s.start for s in shards)
  workers = loader.cores() if options.workers < 0 else options.workers
  bar = _progress_bar(total, progress)
  summaries = {}
  if workers == 0 or not shards:
    for shard in shards:
      summaries[shard.path.name] = _report(write_shard(shard, options))
      bar.update(shard.stop - shard.start)
    bar.close()
    return summaries
  context = multiprocessing.get_context('spawn')   # no fork of a process holding threads
  counter = context.Value('q', 0)
  with concurrent.futures.ProcessPoolExecutor(min(workers, len(shards)), mp_context=context,
                                              initializer=_init_worker,
                                              initargs=(counter,)) as pool:
    futures = {pool.submit(write_shard, shard, options): shard for shard in shards}
    pending = set(futures)
    try:
      while pending:
        done, pending = concurrent.futures.wait(pending, timeout=0.5)
        for future in done:
          summaries[futures[future].path.name] = _report(future.result())
        bar.update(counter.value - bar.n)
    except BaseException:
      for future in pending:
        future.cancel()
      raise
    finally:
      bar.close()
  return summaries


def _report(summary: dict) -> dict:
  for line in summary['skipped']:
    logging.warning('Skipping %s', line)
  return summary


def _progress_bar(total: int, enabled: bool):
  import tqdm
  return tqdm.tqdm(total=total, unit='img', smoothing=0.1, disable=not enabled,
                   dynamic_ncols=True, file=sys.stderr)


def main(argv):
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  out = FLAGS.out or default_out(FLAGS.source, FLAGS.size)
  options = Options(size=FLAGS.size, encoding=FLAGS.encoding, quality=FLAGS.quality,
                    images_per_shard=FLAGS.images_per_shard, workers=FLAGS.workers)
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
  flags.mark_flags_as_required(['source'])
  app.run(main)
