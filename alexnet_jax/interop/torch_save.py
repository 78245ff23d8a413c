"""State-dict files as `torch.save(model.state_dict(), path)` writes them, written without
PyTorch: the zip archive `torch_file.py` describes, a pickle naming only the globals
PyTorch's own files name, each storage's bytes stored (not deflated) at a multiple of 64.
"""

import io
import pickle
import struct
import zipfile

import numpy as np
from etils import epath

from alexnet_jax.interop.torch_file import STORAGE_DTYPES

_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in STORAGE_DTYPES.items()}
_ALIGNMENT = 64   # torch.save starts each storage's bytes at a multiple of 64 (for mmap)


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
