"""Where runs write: the workdir, writes that land whole, and the storage's failures in words.

A write can fail for the storage's sake: it refuses (full, over quota,
read-only, no permission) or cannot be reached (an object store's server,
after its library's retries). `storage_error` turns such a failure into a
StorageError that says what happened and what to do; any other failure is not
the storage's to explain, and passes as it is.
"""

import errno
import shutil

from etils import epath

from alexnet_jax.errors import StorageError

# A write the storage refuses, as the OS says it and as tensorstore (Orbax's arrays) does.
_REFUSALS = {errno.ENOSPC: 'no space is left on the device', errno.EDQUOT: 'the disk quota is '
             'used up', errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission '
             'is denied', errno.EPERM: 'the operation is not permitted'}
_REFUSAL_TEXTS = {'No space left on device': errno.ENOSPC, 'Disk quota exceeded': errno.EDQUOT,
                  'Read-only file system': errno.EROFS, 'Permission denied': errno.EACCES,
                  'PERMISSION_DENIED': errno.EACCES}
# A storage that does not answer, as the OS, aiohttp (gcsfs), tensorstore and TensorFlow's
# GCS file system (libcurl's words) say it.
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                       errno.EHOSTUNREACH, errno.ENETUNREACH}
_UNREACHABLE_TEXTS = ('Cannot connect to host', 'Could not connect to server',
                      "Couldn't connect to server", 'Could not resolve host', 'UNAVAILABLE:')


def refused_write(error: BaseException) -> str | None:
  """What the storage said when it refused a write (full, read-only, ...), or None."""
  for cause in _causes(error):
    if isinstance(cause, OSError) and cause.errno in _REFUSALS:
      return _REFUSALS[cause.errno]
    for text, code in _REFUSAL_TEXTS.items():
      if text in str(cause):
        return _REFUSALS[code]
  return None


def unreachable(error: BaseException) -> bool:
  """Whether `error` says the storage (an object store's server) could not be reached, after
  the retries of the library that wrote (gcsfs, tensorstore)."""
  for cause in _causes(error):
    if isinstance(cause, ConnectionError) or (
        isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS):
      return True
    if any(text in str(cause) for text in _UNREACHABLE_TEXTS):
      return True
  return False


UNREACHABLE = 'the storage could not be reached'


def storage_failure(error: BaseException) -> tuple[str, str] | None:
  """(what happened, what to do) when a write failed for the storage's sake; None when it
  failed for another reason, which is not the storage's to explain."""
  refusal = refused_write(error)
  if refusal is not None:
    return refusal, ('Free space there, lower --config.keep_checkpoints, or pass another '
                     '--workdir (copy the workdir there to keep its checkpoints).')
  if unreachable(error):
    return UNREACHABLE, 'Check the network, the bucket and its permissions from this host.'
  return None


def storage_error(error: BaseException, subject: str, detail: str = '') -> StorageError | None:
  """The StorageError that says `subject` (e.g. 'The checkpoint of step 4 could not be
  written to DIR') failed for the storage's sake, and what to do; None when `error` is not
  the storage's. `detail` goes between the cause and the fix."""
  failure = storage_failure(error)
  if failure is None:
    return None
  what, fix = failure
  return StorageError(f'{subject}: {what} ({describe(error)}).{detail} {fix}')


def _causes(error: BaseException) -> list[BaseException]:
  """`error` and the errors it was raised from or during, innermost last."""
  chain = []
  while error is not None and error not in chain and len(chain) < 16:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def describe(error: BaseException) -> str:
  """'ValueError: its first line'."""
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
  return f'{type(error).__name__}: {first_line}'


def workdir_path(workdir: str) -> epath.Path:
  """The workdir as a path Orbax takes: absolute on local disks, as it is on gs:// and the
  like."""
  path = epath.Path(workdir)
  return path if '://' in workdir else epath.Path(path.expanduser().absolute())


def free_bytes(directory) -> int | None:
  """Free bytes where `directory` is, on a local disk; None where that cannot be known."""
  if '://' in str(directory):
    return None
  path = epath.Path(directory)
  while not path.exists() and path != path.parent:
    path = path.parent
  return shutil.disk_usage(str(path)).free


def write_whole(path: epath.Path, contents: bytes) -> None:
  """Writes `path` whole or not at all: to a temporary name, renamed when complete; a write
  the storage refuses raises StorageError."""
  temporary = path.parent / (path.name + '.tmp')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(contents)
    temporary.replace(path)   # over a copy of an earlier run, where there is one
  except OSError as e:
    error = storage_error(e, f'{path} could not be written')
    if error is None:
      raise
    raise error from e


def gib(size: int) -> str:
  return f'{size / 2**30:.2f} GiB'
