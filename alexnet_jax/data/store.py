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
"""

import dataclasses
import json
import struct

import grain
import numpy as np
import simplejpeg
from etils import epath

from alexnet_jax.data import loader
from alexnet_jax.errors import DataError

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
  """Writes the record's image into `out` (uint8 [S, S, 3]); returns its label."""
  (label,) = _LABEL.unpack_from(record)
  if encoding == 'jpeg':
    try:
      shape = simplejpeg.decode_jpeg(memoryview(record)[_LABEL.size:], colorspace='RGB',
                                     buffer=out).shape
    except ValueError as e:   # among others, an image larger than `out`
      shape = e
    if shape != out.shape:
      raise DataError(f'A stored image does not decode to {out.shape} ({shape}): the store is '
                      'damaged; prepare it again.')
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

  def split_names(self) -> list[str]:
    return sorted(self.splits)

  def examples(self, split: str) -> int:
    return self.splits[split]['examples']

  def source_of(self, split: str) -> 'StoreSplit':
    paths = [str(epath.Path(self.path) / name) for name in self.splits[split]['shards']]
    return StoreSplit(paths, self.encoding, self.image_size, self.examples(split))


class StoreSplit(loader.ImageSource):
  """One split of a store: its images by index."""

  def __init__(self, paths: list[str], encoding: str, size: int, examples: int):
    self._records = grain.sources.ArrayRecordDataSource(paths)
    self._encoding, self.image_size = encoding, size
    self.stores_jpegs = encoding == 'jpeg'
    if len(self._records) != examples:
      raise DataError(f'The store shards {paths[0]}... hold {len(self._records)} images, its '
                      f'metadata says {examples}: prepare the store again.')

  def __len__(self):
    return len(self._records)

  def record(self, index: int) -> bytes:
    """Record `index` as stored: its label, then its encoded image."""
    return self._records[index]

  def read_into(self, index, out):
    return decode_record_into(self.record(index), self._encoding, out)

  def jpeg(self, index):
    if self._encoding != 'jpeg':
      return None
    record = self.record(index)
    return _LABEL.unpack_from(record)[0], memoryview(record)[_LABEL.size:]


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
               splits=metadata['splits'])


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
