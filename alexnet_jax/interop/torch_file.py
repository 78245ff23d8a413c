"""PyTorch's state-dict files (`torch.save(model.state_dict(), path)`), read and written
without PyTorch.

Since PyTorch 1.6, `torch.save` writes a zip archive: `<name>/data.pkl`, a pickle of the
dict in which each tensor is a call of `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`, its storage a persistent reference ('storage', type, key, device,
numel); and `<name>/data/<key>`, each storage's raw bytes. No library other than PyTorch
reads or writes this format (safetensors is another format), so the pickle is read here
with Python's own unpickler restricted to the few globals a state dict holds, as PyTorch's
`weights_only` loader does: a file that asks for anything else (a whole pickled model, a
TorchScript archive, arbitrary code) is refused before anything runs.
"""

import collections
import io
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
from etils import epath

from alexnet_jax.errors import UserFacingError

# torch.<Name>Storage -> the dtype of its elements.
STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in STORAGE_DTYPES.items()}
# The first bytes of a file of PyTorch's format before 1.6: a pickled magic number.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'
_ALIGNMENT = 64   # torch.save starts each storage's bytes at a multiple of 64 (for mmap)


class NotAStateDict(UserFacingError):
  """The file is not a state dict written by `torch.save`."""


class _Storage:
  """A storage's type, as the pickle names it (torch.FloatStorage, ...)."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


def read_state_dict(path) -> dict[str, np.ndarray]:
  """{name: array} of the state dict `torch.save` wrote to `path` (a local or gs:// path).

  Raises NotAStateDict, naming what the file is instead and what to do.
  """
  data = epath.Path(path).read_bytes()
  if data.startswith(_LEGACY_MAGIC):
    raise NotAStateDict(
        f'{path} is in the format of PyTorch before 1.6, which is not read here. Re-save it '
        f"with PyTorch: torch.save(torch.load('{path}'), 'new.pth'); for torchvision's "
        'AlexNet, download its current file, alexnet-owt-7be5be79.pth.')
  if not zipfile.is_zipfile(io.BytesIO(data)):
    raise NotAStateDict(f'{path} is not a file written by torch.save (not a zip archive of '
                        'PyTorch 1.6 or later). Save the weights with '
                        "torch.save(model.state_dict(), 'weights.pth').")
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      obj = _unpickle(archive, str(path))
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error) as e:
    raise NotAStateDict(f'{path} is damaged or truncated ({type(e).__name__}: {e}): download '
                        'or save it again.') from e
  return _as_state_dict(obj, str(path))


def _unpickle(archive: zipfile.ZipFile, path: str):
  pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pickles) != 1:
    raise NotAStateDict(f'{path} is a zip archive but not one torch.save wrote (it has no '
                        '<name>/data.pkl). Save the weights with '
                        "torch.save(model.state_dict(), 'weights.pth').")
  prefix = pickles[0][:-len('data.pkl')]
  names = set(archive.namelist())
  big_endian = (f'{prefix}byteorder' in names and
                archive.read(f'{prefix}byteorder').strip() == b'big')
  storages = {}

  def storage(pid):
    kind, storage_type, key, _, numel = pid[:5]
    if kind != 'storage' or not isinstance(storage_type, _Storage):
      raise NotAStateDict(f'{path} refers to a {kind!r} object, not a tensor storage.')
    if key not in storages:
      dtype = storage_type.dtype.newbyteorder('>') if big_endian else storage_type.dtype
      raw = np.frombuffer(archive.read(f'{prefix}data/{key}'), dtype)
      if raw.size < numel:
        raise NotAStateDict(f'{path}: storage {key} holds {raw.size} of its {numel} '
                            'elements; the file is truncated: download or save it again.')
      storages[key] = raw.astype(storage_type.dtype)   # native byte order
    return storages[key]

  class Unpickler(pickle.Unpickler):

    def find_class(self, module, name):
      if (module, name) == ('collections', 'OrderedDict'):
        return collections.OrderedDict
      if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
        return _rebuild_tensor
      if (module, name) == ('torch._utils', '_rebuild_parameter'):
        return lambda data, requires_grad, hooks: data
      if module == 'torch' and name in STORAGE_DTYPES:
        return _Storage(name)
      what = f'{module}.{name}'
      hint = (' (a TorchScript archive)' if module.startswith('__torch__') else
              ' (a whole pickled model or optimiser, not only its tensors)')
      raise NotAStateDict(f'{path} holds a {what} object{hint}, where a state dict holds only '
                          "tensors. Save model.state_dict() instead: torch.save("
                          "model.state_dict(), 'weights.pth').")

    def persistent_load(self, pid):
      return storage(pid)

  with archive.open(pickles[0]) as f:
    return Unpickler(f).load()


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
  """The tensor `torch._utils._rebuild_tensor_v2` would make: a strided view of its storage,
  copied so that it owns its memory."""
  del requires_grad, hooks, metadata
  size, stride = tuple(size), tuple(stride)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if offset < 0 or last >= storage.size or any(s < 0 for s in stride):
    raise NotAStateDict(f'a tensor of size {size} and strides {stride} at offset {offset} '
                        f'lies outside its storage of {storage.size} elements: the file is '
                        'damaged.')
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=[s * itemsize for s in stride])
  return np.array(view)


def _as_state_dict(obj, path: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict):
    raise NotAStateDict(f'{path} holds a {type(obj).__name__}, not a state dict (a dict of '
                        "tensors by name). Save it with torch.save(model.state_dict(), "
                        "'weights.pth').")
  others = [f'{k!r} ({type(v).__name__})' for k, v in obj.items()
            if not (isinstance(k, str) and isinstance(v, np.ndarray))]
  if others:
    raise NotAStateDict(
        f'{path} holds a dict, but not a state dict of tensors by name: '
        f'{", ".join(others[:5])}{" ..." if len(others) > 5 else ""} are not tensors. If it is '
        "a training checkpoint, save its model's state dict alone: torch.save("
        "checkpoint['model'], 'weights.pth').")
  return dict(obj)


def write_state_dict(path, state_dict: dict[str, np.ndarray]) -> None:
  """Writes `state_dict` as `torch.save` does, so that `torch.load(path)` (also with
  weights_only=True) returns it as a dict of tensors."""
  arrays = {name: np.asarray(value, order='C') for name, value in state_dict.items()}
  for name, value in arrays.items():
    if value.dtype not in _STORAGE_NAMES:
      raise ValueError(f'{name}: arrays of {value.dtype} have no PyTorch storage type.')
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_STORED) as archive:
    _write_aligned(archive, 'archive/data.pkl', _state_dict_pickle(arrays))
    _write_aligned(archive, 'archive/byteorder', b'little')
    for key, value in enumerate(arrays.values()):
      _write_aligned(archive, f'archive/data/{key}', value.astype(value.dtype.newbyteorder('<'),
                                                                  copy=False).tobytes())
    _write_aligned(archive, 'archive/version', b'3\n')
  epath.Path(path).write_bytes(buffer.getvalue())


def _write_aligned(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
  """A stored entry whose bytes start at a multiple of _ALIGNMENT, as torch.save aligns them:
  an extra field of the local header pads it."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  start = archive.fp.tell() + 30 + len(name.encode()) + 4   # header, name, extra field's head
  padding = -start % _ALIGNMENT
  info.extra = b'FB' + struct.pack('<H', padding) + b'Z' * padding
  archive.writestr(info, data)


def _state_dict_pickle(arrays: dict[str, np.ndarray]) -> bytes:
  """The pickle torch.save writes for an OrderedDict of contiguous tensors (protocol 2).

  Written opcode by opcode: Python's pickler names a global only if it can import it, and
  torch._utils is not importable without PyTorch.
  """
  out = io.BytesIO()
  w = out.write

  def text(s: str):
    encoded = s.encode()
    w(pickle.BINUNICODE + struct.pack('<I', len(encoded)) + encoded)

  def integer(n: int):
    if not -2**31 <= n < 2**31:
      raise ValueError(f'{n} does not fit a 4-byte integer.')
    w(pickle.BININT + struct.pack('<i', n))

  def integers(values):
    w(pickle.MARK)
    for v in values:
      integer(int(v))
    w(pickle.TUPLE)

  def global_(module: str, name: str):
    w(pickle.GLOBAL + f'{module}\n{name}\n'.encode())

  def empty_ordered_dict():
    global_('collections', 'OrderedDict')
    w(pickle.EMPTY_TUPLE + pickle.REDUCE)

  w(pickle.PROTO + b'\x02')
  empty_ordered_dict()
  w(pickle.MARK)
  for key, (name, value) in enumerate(arrays.items()):
    text(name)
    global_('torch._utils', '_rebuild_tensor_v2')
    w(pickle.MARK)
    w(pickle.MARK)                       # the storage's persistent id
    text('storage')
    global_('torch', _STORAGE_NAMES[value.dtype])
    text(str(key))
    text('cpu')
    integer(value.size)
    w(pickle.TUPLE + pickle.BINPERSID)
    integer(0)                           # offset into the storage
    integers(value.shape)
    integers(s // value.dtype.itemsize for s in value.strides)
    w(pickle.NEWFALSE)                   # requires_grad
    empty_ordered_dict()                 # backward hooks
    w(pickle.TUPLE + pickle.REDUCE)
  w(pickle.SETITEMS + pickle.STOP)
  return out.getvalue()
