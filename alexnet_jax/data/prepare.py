"""Writing a dataset once in the paper's form, as a store the trainer reads fast
(`python -m alexnet_jax.commands.prepare`).

Every image becomes RGB with its shorter side resized to the store's size (256,
the paper's) and its centre square kept, stored as a JPEG or as raw pixels, in
ArrayRecord shards with the labels, class names and split sizes (`store.py`).
Sources: an image folder (`image_folder.py`), or any TFDS image-classification
dataset by name, built first if it is not yet.

The shards are written by worker processes (all cores by default). An
interrupted run keeps its finished shards, and the same call again writes only
the rest. The same input gives the same bytes. Files that cannot be decoded are
logged with their paths and left out. The store is complete when its
metadata.json is written, last.
"""

import concurrent.futures
import dataclasses
import json
import logging
import math
import multiprocessing
import pathlib
import sys

from etils import epath

from alexnet_jax.data import decode, image_files, image_folder, loader, splits, store
from alexnet_jax.errors import DataError

_counter = None   # images done, shared by the worker processes


@dataclasses.dataclass(frozen=True)
class Options:
  size: int = 256
  encoding: str = 'jpeg'
  quality: int = 90
  images_per_shard: int = 1024
  workers: int = -1          # processes; -1: one per core, 0: this process alone
  limits: image_files.Limits = image_files.Limits()   # of a folder's files


@dataclasses.dataclass(frozen=True)
class FolderReader:
  """Listed files of a folder split: (encoded bytes, label, path) of each."""
  paths: tuple
  labels: tuple
  limits: image_files.Limits

  def read(self):
    for path, label in zip(self.paths, self.labels):
      try:
        encoded = image_files.read(path, self.limits)
      except OSError as e:
        yield None, label, f'{path} ({e.strerror or e})'
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
        image = decode.square(bytes(encoded), options.size, options.limits.max_pixels)
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


def _open_source(source: str, split_names, limits, *, manual_dir, tfds_data_dir,
                 imagenet_wnid_labels):
  """(classes, {split: (examples, reader_of(start, stop))}) of the source."""
  if source.startswith(image_folder.PREFIX):
    folder = image_folder.open_folder(source[len(image_folder.PREFIX):], split_names,
                                      imagenet_wnid_labels, limits)

    def folder_reader(paths, labels):
      return lambda start, stop: FolderReader(tuple(paths[start:stop]),
                                              tuple(int(x) for x in labels[start:stop]), limits)

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
  classes, readers = _open_source(source, list(split_names), options.limits,
                                  manual_dir=manual_dir, tfds_data_dir=tfds_data_dir,
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
