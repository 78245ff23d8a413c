"""Image files found in folders and read within bounds: what `classify`, `prepare` and
training on an image folder read alike.

Only regular files are read: a FIFO would block the reader forever and a link to
/dev/zero would be read until memory runs out, so anything else is named and skipped.
A folder tree is walked following its links, each folder once by its resolved identity,
so that a link back into the tree neither repeats its images nor loops. A file of more
than `Limits.max_bytes` is skipped unread, an image of more than `Limits.max_pixels` from
its header (decode.py); which formats are images is decode.py's FORMATS, by content.
"""

import dataclasses
import os
import stat

from etils import epath

from alexnet_jax.data import decode

SUFFIXES = ('.jpeg', '.jpg', '.png', '.gif', '.bmp')   # the names of decode.FORMATS' files
MAX_BYTES = 2**27   # 128 MiB: a JPEG of a 100-megapixel camera is a tenth of it
_TAIL_BYTES = 1024   # where a complete JPEG's end marker or a PNG's IEND chunk must be
_NOT_REGULAR = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'),
                (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                (stat.S_ISSOCK, 'a socket'))


@dataclasses.dataclass(frozen=True)
class Limits:
  """The most bytes and pixels an image file may have."""
  max_bytes: int = MAX_BYTES
  max_pixels: int = decode.MAX_PIXELS


class UnreadableImage(OSError):
  """A file that is not read: not a regular file, or over the byte cap."""


def _open_regular(path: str, limits: Limits):
  """`path` opened for reading, once known to be a regular file within the byte cap; it is
  opened without blocking, so that a FIFO is told apart without waiting for a writer."""
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  try:
    mode, size = os.fstat(fd).st_mode, os.fstat(fd).st_size
    for test, kind in _NOT_REGULAR:
      if test(mode):
        raise UnreadableImage(f'{kind}, not a regular file')
    _check_bytes(size, limits)
  except BaseException:
    os.close(fd)
    raise
  return os.fdopen(fd, 'rb')


def _check_bytes(size: int, limits: Limits) -> None:
  if size > limits.max_bytes:
    raise UnreadableImage(f'{size:,} bytes, over the cap of {limits.max_bytes:,} bytes an image '
                          'may have (prepare and classify take --max_image_bytes)')


def read(path, limits: Limits = Limits()) -> bytes:
  """The bytes of the image file `path` (local or gs://); UnreadableImage or OSError if it
  cannot be read within `limits`."""
  if '://' in str(path):   # an object store holds no FIFOs, devices or links
    _check_bytes(epath.Path(path).stat().length, limits)
    return epath.Path(path).read_bytes()
  with _open_regular(str(path), limits) as f:
    encoded = f.read(limits.max_bytes + 1)   # a file that grew since fstat stops here
  _check_bytes(len(encoded), limits)
  return encoded


def why_unreadable(path, limits: Limits = Limits()) -> str | None:
  """Why the file cannot be a whole image (not a regular file, over the byte cap, empty,
  truncated, another format), or None; only its first and last bytes are read."""
  try:
    with _open_regular(str(path), limits) as f:
      head = f.read(8)
      size = f.seek(0, 2)
      f.seek(max(0, size - _TAIL_BYTES))
      tail = f.read()
  except UnreadableImage as e:
    return str(e)
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  image_format = decode.format_of(head)
  if size < 16:
    return f'{size} bytes long'
  if image_format == 'JPEG' and b'\xff\xd9' not in tail:
    return 'a JPEG without its end marker (truncated)'
  if image_format == 'PNG' and b'IEND' not in tail:
    return 'a PNG without its IEND chunk (truncated)'
  return None if image_format else f'not {decode.FORMAT_NAMES}'


def images_under(folder) -> list[str]:
  """The files with an image's suffix in `folder` and its subfolders (local or gs://), sorted.

  Links are followed, but each folder is walked once, by its resolved identity.
  """
  if '://' in str(folder):
    return sorted(_images_in_object_store(epath.Path(folder)))
  found, seen = [], set()
  for top, folders, files in os.walk(folder, followlinks=True):
    identity = (os.stat(top).st_dev, os.stat(top).st_ino)
    if identity in seen:   # a link back to a folder already walked
      folders[:] = []
      continue
    seen.add(identity)
    folders.sort()   # the first path to a folder reached twice is the one kept
    found += [os.path.join(top, name) for name in files if _is_image_name(name)]
  return sorted(found)


def _images_in_object_store(folder: epath.Path) -> list[str]:
  """epath has no recursive glob on gs://; an object store has no links to loop on."""
  found = []
  for path in folder.iterdir():
    if path.is_dir():
      found += _images_in_object_store(path)
    elif _is_image_name(path.name):
      found.append(str(path))
  return found


def _is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in SUFFIXES
