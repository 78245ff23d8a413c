"""The prepared store: every image once at the paper's 256x256, in ArrayRecord shards.

A store is a folder written by `python -m alexnet_jax.commands.prepare`:

    metadata.json                         written last: the store is complete once it exists
    train-00000-of-00013.array_record     one record per image
    train-00000-of-00013.json             the shard's count and the files it left out
    validation-00000-of-00004.array_record
    ...

A record is the label as 4 little-endian bytes, then the image: a JPEG of
`image_size` x `image_size` pixels, or those pixels raw (uint8, row-major RGB).
Shards hold consecutive images of the split in the source's order; training
reads them by index, in a shuffled order (`loader.py`).

A split is checked when it opens: every shard opens and holds the count its .json
says (a cut or missing shard is named then). A record damaged inside a shard is
found only when it is read: DamagedRecordError names its shard and its place.
"""

import bisect
import concurrent.futures
import dataclasses
import itertools
import json
import math
import struct

import grain
import numpy as np
import simplejpeg
from etils import epath

from alexnet_jax.data import image_source
from alexnet_jax.errors import DamagedRecordError, DataError

METADATA = 'metadata.json'
FORMAT_VERSION = 1
ENCODINGS = ('jpeg', 'raw')
# One record per chunk: random access reads exactly one image. JPEG does not compress further.
WRITER_OPTIONS = 'group_size:1,uncompressed'
_LABEL = struct.Struct('<I')


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.array_record'


def encode_record(label: int, image: np.ndarray, encoding: str, quality: int) -> bytes:
  if encoding == 'jpeg':
    payload = simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality,
                                     colorspace='RGB', colorsubsampling='420')
  else:
    payload = np.ascontiguousarray(image, np.uint8).tobytes()
  return _LABEL.pack(label) + payload


def decode_record_into(record: bytes, encoding: str, out: np.ndarray) -> int:
  """Writes the record's image into `out` (uint8 [S, S, 3]); returns its label. ValueError
  if it holds no such image (`StoreSplit.read_into` names the record)."""
  (label,) = _LABEL.unpack_from(record)
  if encoding == 'jpeg':
    try:
      shape = simplejpeg.decode_jpeg(memoryview(record)[_LABEL.size:], colorspace='RGB',
                                     buffer=out).shape
    except ValueError as e:   # among others, an image larger than `out`
      shape = e
    if shape != out.shape:
      raise ValueError(f'its image does not decode to {out.shape} ({shape})')
  else:
    out[...] = np.frombuffer(record, np.uint8, offset=_LABEL.size).reshape(out.shape)
  return label


@dataclasses.dataclass(frozen=True)
class Store:
  """A complete store's metadata, and its splits as random-access sources."""
  path: str
  source: str                     # what it was prepared from
  image_size: int
  encoding: str                   # 'jpeg' or 'raw'
  classes: tuple[str, ...]
  splits: dict                    # {split: {'examples': n, 'shards': [names], 'skipped': [..]}}
  quality: int | None = None      # the JPEGs' quality

  def split_names(self) -> list[str]:
    return sorted(self.splits)

  def examples(self, split: str) -> int:
    return self.splits[split]['examples']

  def shard_path(self, name: str) -> epath.Path:
    return epath.Path(self.path) / name

  def source_of(self, split: str) -> 'StoreSplit':
    """The split's images; DataError naming the shards, if a shard is missing, cannot be
    opened, or holds another count of records than its .json says."""
    return StoreSplit(self, split, check_shards(self, split))

  def prepare_again(self, shards) -> str:
    """How to write `shards` again, and only them: `prepare` writes the shards that are not
    there and keeps the others, and the same source gives the same bytes."""
    names = ', '.join(str(self.shard_path(name)) for name in shards)
    return (f'Prepare {"that shard" if len(shards) == 1 else "those shards"} again: delete '
            f'{names}, {"its" if len(shards) == 1 else "their"} .json and '
            f'{self.shard_path(METADATA)}, then run (it writes only the shards that are missing, '
            f'from the same source the same bytes, and keeps the others)\n  '
            f'{self.prepare_command()}')

  def prepare_command(self) -> str:
    """The command that prepared this store, with the options that give its shards."""
    options = [f'--source={self.source}', f'--size={self.image_size}', f'--out={self.path}']
    if self.encoding != 'jpeg':
      options.append(f'--encoding={self.encoding}')
    elif self.quality not in (None, 90):
      options.append(f'--quality={self.quality}')
    if self.split_names() != ['train', 'validation']:
      options.append(f'--splits={",".join(self.split_names())}')
    # Any value that cuts each split into as many shards as it is in gives the same shards:
    # they split the source's images evenly (`prepare.py`).
    cuts = [(s['examples'] + len(s['skipped']), len(s['shards'])) for s in self.splits.values()]
    if any(max(1, math.ceil(n / 1024)) != shards for n, shards in cuts):   # not the default's
      per_shard = max(1, *(math.ceil(n / shards) for n, shards in cuts))
      options.append(f'--images_per_shard={per_shard}')
    return 'python -m alexnet_jax.commands.prepare ' + ' '.join(options)


def check_shards(prepared: Store, split: str) -> list[int]:
  """Each shard's count of records; DataError naming every shard that is missing, cannot be
  opened, or holds another count than its .json says, and how to write them again. Reads
  each shard's index (in threads, as many shards at once as grain does), not its records."""
  names = prepared.splits[split]['shards']
  with concurrent.futures.ThreadPoolExecutor(max(1, min(len(names), 64))) as pool:
    found = list(pool.map(lambda name: _shard_count(prepared.shard_path(name)), names))
  problems = [(name, problem) for name, (_, problem) in zip(names, found) if problem]
  if problems:
    listed = '; '.join(f'its shard {name} {problem}' for name, problem in problems)
    raise DataError(f'The store {prepared.path} is damaged: {listed}. '
                    f'{prepared.prepare_again([name for name, _ in problems])}')
  counts = [count for count, _ in found]
  if sum(counts) != prepared.examples(split):
    raise DataError(f'The shards of the split {split!r} of the store {prepared.path} hold '
                    f'{sum(counts)} images, its {METADATA} says {prepared.examples(split)}: '
                    f'prepare the store again:\n  {prepared.prepare_command()}')
  return counts


def _shard_count(path: epath.Path) -> tuple[int, str | None]:
  """(records, None) if the shard opens and holds the count its .json says; else (0, what
  is wrong with it)."""
  from array_record.python import array_record_module
  summary = path.with_suffix('.json')
  if not path.exists():
    return 0, 'is missing'
  try:
    expected = json.loads(summary.read_text())['examples']
  except (OSError, ValueError, KeyError) as e:
    return 0, f'has no readable {summary.name} ({e})'
  reader = array_record_module.ArrayRecordReader(str(path))
  count = reader.num_records()
  try:
    reader.close()   # where a reader that could not open says why
  except RuntimeError as e:
    return 0, f'cannot be opened ({e})'
  if count != expected:
    return 0, f'holds {count} records, its {summary.name} says {expected}'
  return count, None


class StoreSplit(image_source.ImageSource):
  """One split of a store: its images by index. A record that cannot be read or decoded
  raises DamagedRecordError, which names its shard and its place in it."""

  def __init__(self, prepared: Store, split: str, counts: list[int]):
    names = prepared.splits[split]['shards']
    self._prepared, self._split, self._names = prepared, split, tuple(names)
    self._encoding, self.image_size = prepared.encoding, prepared.image_size
    self.stores_jpegs = prepared.encoding == 'jpeg'
    # Each shard read as its counted records: grain need not open every shard to count them.
    self._records = grain.sources.ArrayRecordDataSource(
        [f'{prepared.shard_path(name)}[0:{count}]' for name, count in zip(names, counts)])
    self._ends = list(itertools.accumulate(counts))   # where each shard's records end

  def __len__(self):
    return len(self._records)

  def record(self, index: int) -> bytes:
    """Record `index` as stored: its label, then its encoded image."""
    try:
      return self._records[index]
    except (RuntimeError, OSError) as e:   # Riegeli's damaged blocks and chunks, lost files
      raise self._damaged(index, e) from None

  def read_into(self, index, out):
    record = self.record(index)
    try:
      return decode_record_into(record, self._encoding, out)
    except (ValueError, struct.error) as e:
      raise self._damaged(index, e) from None

  def jpeg(self, index):
    if self._encoding != 'jpeg':
      return None
    record = self.record(index)
    try:
      return _LABEL.unpack_from(record)[0], memoryview(record)[_LABEL.size:]
    except struct.error as e:
      raise self._damaged(index, e) from None

  def _damaged(self, index: int, cause: Exception) -> DamagedRecordError:
    shard = bisect.bisect_right(self._ends, index)
    in_shard = index - (self._ends[shard - 1] if shard else 0)
    remedy = (f'{self._prepared.prepare_again([self._names[shard]])}\nOr go on past damaged '
              'records with --config.skip_damaged_records=true: training reads another image of '
              'the batch in place of each, evaluation leaves each out, so the data is no longer '
              'all of the store\'s.')
    return DamagedRecordError(self._prepared.path, self._split, self._names[shard], in_shard,
                              index, str(cause), remedy)


def is_complete(path) -> bool:
  return (epath.Path(path) / METADATA).exists()


def open_store(path) -> Store:
  """The store at `path`; DataError if it is not a complete store of this version."""
  metadata_path = epath.Path(path) / METADATA
  try:
    metadata = json.loads(metadata_path.read_text())
  except FileNotFoundError as e:
    raise DataError(f'{path} is not a prepared store (no {METADATA}).') from e
  if metadata.get('version') != FORMAT_VERSION:
    raise DataError(f'{path} was prepared by another version of the store format '
                    f'({metadata.get("version")}, this code reads {FORMAT_VERSION}): prepare it '
                    'again.')
  return Store(path=str(path), source=metadata['source'], image_size=metadata['image_size'],
               encoding=metadata['encoding'], classes=tuple(metadata['classes']),
               splits=metadata['splits'], quality=metadata.get('jpeg_quality'))


def write_metadata(path, *, source: str, image_size: int, encoding: str, quality: int,
                   classes, splits: dict) -> None:
  """Marks the store complete: written to a temporary name, then renamed."""
  metadata = {'version': FORMAT_VERSION, 'source': source, 'image_size': image_size,
              'encoding': encoding, 'jpeg_quality': quality if encoding == 'jpeg' else None,
              'classes': list(classes), 'splits': splits}
  final = epath.Path(path) / METADATA
  temporary = final.parent / (METADATA + '.tmp')
  temporary.write_text(json.dumps(metadata, indent=1))
  temporary.rename(final)
