"""PyTorch's state-dict files (`torch.save(model.state_dict(), path)`), read without PyTorch
(`torch_save.py` writes them).

Since PyTorch 1.6, `torch.save` writes a zip archive: `<name>/data.pkl`, a pickle of the
dict in which each tensor is a call of `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`, its storage a persistent reference ('storage', type, key, device,
numel); and `<name>/data/<key>`, each storage's raw bytes. No library other than PyTorch
reads or writes this format (safetensors is another format), so the pickle is read here
with Python's own unpickler restricted to the few globals a state dict holds, as PyTorch's
`weights_only` loader does: a file that asks for anything else (a whole pickled model, a
TorchScript archive, arbitrary code) is refused before anything runs. What the file says
of its sizes is checked before anything is allocated by it: a file of a few hundred bytes
can claim terabytes of tensors (strides of 0) or unpack to gigabytes (a deflated entry).
"""

import collections
import dataclasses
import functools
import io
import math
import pickle
import struct
import zipfile
import zlib

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
# The first bytes of a file of PyTorch's format before 1.6: a pickled magic number.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'
# Bounds that keep a damaged or hostile file from exhausting memory before it is refused.
MAX_BYTES = 2**31           # the file, its unpacked entries, its tensors: 8x torchvision's AlexNet
_MAX_PICKLE_BYTES = 2**24   # the names and shapes: about 100 bytes a tensor
_MAX_RATIO = 20             # unpacked / packed: deflate packs float weights about 1.1 to 1
_MAX_DEFLATED_SMALL = 2**20   # below this a deflated entry is too small to matter
_WHY_BOUNDED = ("torchvision's AlexNet is 244 MB; the bound keeps a damaged or hostile file "
                'from exhausting memory')


class NotAStateDict(UserFacingError):
  """The file is not a state dict written by `torch.save`."""


@dataclasses.dataclass(frozen=True)
class _Storage:
  """A storage's type, as the pickle names it (torch.FloatStorage, ...)."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A storage the pickle refers to: its entry `<name>/data/<key>` is read only once every
  tensor on it has been checked."""
  key: str
  dtype: np.dtype
  numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A tensor the pickle describes (a strided view of a storage), not yet read."""
  storage: _StorageRef
  offset: int
  shape: tuple
  strides: tuple

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.storage.dtype.itemsize


def read_state_dict(path, check_shapes=None, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
  """{name: array} of the state dict `torch.save` wrote to `path` (a local or gs:// path).

  Everything is checked before a tensor is allocated: the file's size and its zip entries'
  declared sizes against `max_bytes` (and deflated ones against a ratio), the pickle's
  globals, each tensor's strides against its storage and each storage's size against its
  elements, then `check_shapes({name: shape})` (the caller's layout; it raises to refuse),
  then the tensors' total size against `max_bytes`. Raises NotAStateDict, naming what the
  file is instead and what to do.
  """
  size = epath.Path(path).stat().length
  if size > max_bytes:
    raise NotAStateDict(f'{path} is {size:,} bytes, more than the {max_bytes:,} a state dict '
                        f'read here may be ({_WHY_BOUNDED}).')
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
      _check_entries(archive, str(path), max_bytes)
      prefix, obj = _unpickle(archive, str(path))
      tensors = _as_state_dict(obj, str(path))
      _check_storages(archive, prefix, tensors, str(path))
      if check_shapes is not None:
        check_shapes({name: tensor.shape for name, tensor in tensors.items()})
      _check_total(tensors, str(path), max_bytes)
      return _read_tensors(archive, prefix, tensors)
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error, zlib.error) as e:
    raise NotAStateDict(f'{path} is damaged or truncated ({type(e).__name__}: {e}): download '
                        'or save it again.') from e


def _check_entries(archive: zipfile.ZipFile, path: str, max_bytes: int) -> None:
  """Refuses, from the sizes the zip declares and before inflating anything, entries that
  would unpack beyond `max_bytes` or deflated ones that unpack beyond a sane ratio."""
  total = sum(info.file_size for info in archive.infolist())
  if total > max_bytes:
    raise NotAStateDict(f'{path} unpacks to {total:,} bytes, more than the {max_bytes:,} a state '
                        f'dict read here may be ({_WHY_BOUNDED}).')
  for info in archive.infolist():
    if (info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_DEFLATED_SMALL and
        info.file_size > _MAX_RATIO * info.compress_size):
      raise NotAStateDict(
          f'{path}: its entry {info.filename} unpacks {info.compress_size:,} bytes to '
          f'{info.file_size:,}, more than {_MAX_RATIO} times its size, as no tensor data does '
          '(a zip bomb, or a file not written by torch.save). Save the weights with '
          "torch.save(model.state_dict(), 'weights.pth').")


def _unpickle(archive: zipfile.ZipFile, path: str):
  """(the archive's folder prefix, the pickle's object with _TensorRefs for its tensors)."""
  pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pickles) != 1:
    raise NotAStateDict(f'{path} is a zip archive but not one torch.save wrote (it has no '
                        '<name>/data.pkl). Save the weights with '
                        "torch.save(model.state_dict(), 'weights.pth').")
  if archive.getinfo(pickles[0]).file_size > _MAX_PICKLE_BYTES:
    raise NotAStateDict(f'{path}: its {pickles[0]} is {archive.getinfo(pickles[0]).file_size:,} '
                        f'bytes, more than the {_MAX_PICKLE_BYTES:,} a state dict\'s names and '
                        'shapes take: it is not a state dict written by torch.save.')
  storages = {}

  def storage(pid):
    if not isinstance(pid, tuple) or len(pid) < 5:
      raise NotAStateDict(f'{path} refers to {pid!r}, not a tensor storage: the file is damaged.')
    kind, storage_type, key, _, numel = pid[:5]
    if (kind != 'storage' or not isinstance(storage_type, _Storage) or not _is_count(numel)):
      raise NotAStateDict(f'{path} refers to a {kind!r} object, not a tensor storage.')
    ref = storages.setdefault(str(key), _StorageRef(str(key), storage_type.dtype, numel))
    if ref != _StorageRef(str(key), storage_type.dtype, numel):
      raise NotAStateDict(f'{path} gives storage {key} two types or sizes: the file is damaged.')
    return ref

  class Unpickler(pickle.Unpickler):

    def find_class(self, module, name):
      if (module, name) == ('collections', 'OrderedDict'):
        return collections.OrderedDict
      if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
        return functools.partial(_rebuild_tensor, path)
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
    try:
      return pickles[0][:-len('data.pkl')], Unpickler(f).load()
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
      # A pickle that calls what it names with arguments no state dict has.
      raise NotAStateDict(f'{path} is damaged ({type(e).__name__}: {e}): download or save it '
                          'again.') from e


def _is_count(n) -> bool:
  return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _rebuild_tensor(path, storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
  """What `torch._utils._rebuild_tensor_v2` would make, described, once its view is known to
  lie inside its storage."""
  del requires_grad, hooks, metadata
  if not (isinstance(storage, _StorageRef) and _is_count(offset) and
          isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and
          len(size) == len(stride) and all(map(_is_count, [*size, *stride]))):
    raise NotAStateDict(f'{path} describes a tensor as ({offset!r}, {size!r}, {stride!r}) of '
                        f'{storage!r}, not as torch.save does: the file is damaged.')
  size, stride = tuple(size), tuple(stride)
  # The last element the view reaches: offset + sum((n - 1) * stride) (nothing if empty).
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
  if end > storage.numel:
    raise NotAStateDict(f'{path}: a tensor of size {size} and strides {stride} at offset {offset} '
                        f'lies outside its storage of {storage.numel} elements: the file is '
                        'damaged.')
  return _TensorRef(storage, offset, size, stride)


def _as_state_dict(obj, path: str) -> dict[str, _TensorRef]:
  if not isinstance(obj, dict):
    raise NotAStateDict(f'{path} holds a {type(obj).__name__}, not a state dict (a dict of '
                        "tensors by name). Save it with torch.save(model.state_dict(), "
                        "'weights.pth').")
  others = [f'{k!r} ({type(v).__name__})' for k, v in obj.items()
            if not (isinstance(k, str) and isinstance(v, _TensorRef))]
  if others:
    raise NotAStateDict(
        f'{path} holds a dict, but not a state dict of tensors by name: '
        f'{", ".join(others[:5])}{" ..." if len(others) > 5 else ""} are not tensors. If it is '
        "a training checkpoint, save its model's state dict alone: torch.save("
        "checkpoint['model'], 'weights.pth').")
  return dict(obj)


def _check_storages(archive: zipfile.ZipFile, prefix: str, tensors: dict, path: str) -> None:
  """Each storage's entry holds exactly its elements' bytes, as the zip declares them."""
  for ref in {tensor.storage for tensor in tensors.values()}:
    name, itemsize = f'{prefix}data/{ref.key}', ref.dtype.itemsize
    try:
      declared = archive.getinfo(name).file_size
    except KeyError:
      raise NotAStateDict(f'{path} has no {name}, the bytes of a storage its tensors use: the '
                          'file is damaged or truncated: download or save it again.') from None
    if declared < ref.numel * itemsize:
      raise NotAStateDict(f'{path}: storage {ref.key} holds {declared // itemsize} of its '
                          f'{ref.numel} elements; the file is truncated: download or save it '
                          'again.')
    if declared != ref.numel * itemsize:
      raise NotAStateDict(f'{path}: storage {ref.key} holds {declared:,} bytes where its '
                          f'{ref.numel} elements of {ref.dtype} take {ref.numel * itemsize:,}: '
                          'the file is damaged: download or save it again.')


def _check_total(tensors: dict, path: str, max_bytes: int) -> None:
  total = sum(tensor.nbytes for tensor in tensors.values())
  if total > max_bytes:
    name = max(tensors, key=lambda n: tensors[n].nbytes)
    raise NotAStateDict(
        f"{path}'s tensors take {total:,} bytes ({name}: {tensors[name].shape}, strides "
        f'{tensors[name].strides}), more than the {max_bytes:,} a state dict read here may be '
        f'({_WHY_BOUNDED}).')


def _read_tensors(archive: zipfile.ZipFile, prefix: str, tensors: dict) -> dict[str, np.ndarray]:
  """The tensors, each copied out of its storage so that it owns its memory."""
  big_endian = (f'{prefix}byteorder' in archive.namelist() and
                archive.read(f'{prefix}byteorder').strip() == b'big')
  storages, out = {}, {}
  for name, tensor in tensors.items():
    ref = tensor.storage
    if ref.key not in storages:
      dtype = ref.dtype.newbyteorder('>') if big_endian else ref.dtype
      raw = np.frombuffer(archive.read(f'{prefix}data/{ref.key}'), dtype)
      storages[ref.key] = raw.astype(ref.dtype, copy=False)   # native byte order
    itemsize = ref.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storages[ref.key][tensor.offset:], shape=tensor.shape,
                                           strides=[s * itemsize for s in tensor.strides])
    out[name] = np.array(view)
  return out
