"""PyTorch's state-dict files read and written without PyTorch, against files PyTorch wrote
(tests/fixtures, made by tests/fixtures/make_torch_files.py) and the numbers PyTorch gave for them."""

import importlib.util
import json
import pathlib
import pickle
import pickletools
import re
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.commands import weights
from alexnet_jax.interop import torch_file, torch_save, torchvision_layout
from configs import alexnet

DATA = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'
HAS_TORCH = importlib.util.find_spec('torch') is not None


def _check_against(state_dict: dict, expected: dict) -> None:
  assert list(state_dict) == list(expected)
  for name, want in expected.items():
    value = state_dict[name]
    assert list(value.shape) == want['shape'], name
    assert str(value.dtype) == {'float': 'float32', 'double': 'float64', 'half': 'float16',
                                'long': 'int64'}.get(want['dtype'], want['dtype']), name
    flat = value.astype(np.float64).reshape(-1)
    shown = flat if flat.size <= 24 else np.concatenate([flat[:3], flat[-3:]])
    np.testing.assert_array_equal(shown, want['values'], err_msg=name)
    np.testing.assert_allclose(flat.sum(), want['sum'], rtol=1e-6, atol=1e-12, err_msg=name)


def test_reads_every_dtype_view_and_stride_pytorch_wrote():
  # Views of one storage at an offset and with a stride, a transpose, half, bfloat16,
  # integers, booleans, a 0-d tensor, an empty one and an nn.Parameter.
  _check_against(torch_file.read_state_dict(DATA / 'formats.pth'),
                 json.loads((DATA / 'formats.json').read_text()))


def test_reads_a_torchvision_alexnet_state_dict():
  expected = json.loads((DATA / 'owt_narrow.json').read_text())['tensors']
  _check_against(torch_file.read_state_dict(DATA / 'owt_narrow.pth'), expected)


@pytest.mark.parametrize('name, message', [
    ('legacy_format.pth', 'format of PyTorch before 1.6'),
    ('whole_module.pth', r'holds a torch\.nn\.modules\.linear\.Linear object .*state_dict\(\)'),
    ('training_checkpoint.pth', r"'model' \(dict\), 'epoch' \(int\) are not tensors"),
])
def test_files_that_are_not_state_dicts_are_named(name, message):
  with pytest.raises(torch_file.NotAStateDict, match=message):
    torch_file.read_state_dict(DATA / name)


def test_other_files_and_damaged_ones_are_named(tmp_path):
  text = tmp_path / 'notes.pth'
  text.write_text('not weights')
  with pytest.raises(torch_file.NotAStateDict, match='not a file written by torch.save'):
    torch_file.read_state_dict(text)
  other_zip = tmp_path / 'other.pth'
  with zipfile.ZipFile(other_zip, 'w') as archive:
    archive.writestr('readme.txt', 'hello')
  with pytest.raises(torch_file.NotAStateDict, match='has no <name>/data.pkl'):
    torch_file.read_state_dict(other_zip)
  # A download cut short: the zip's directory at the end is gone.
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes((DATA / 'owt_narrow.pth').read_bytes()[:40_000])
  with pytest.raises(torch_file.NotAStateDict, match='not a file written by torch.save'):
    torch_file.read_state_dict(truncated)


def test_a_storage_cut_short_is_named(tmp_path):
  damaged = tmp_path / 'damaged.pth'
  with zipfile.ZipFile(DATA / 'formats.pth') as source, zipfile.ZipFile(damaged, 'w') as out:
    for info in source.infolist():
      data = source.read(info)
      out.writestr(info, data[:4] if info.filename == 'formats/data/0' else data)
  with pytest.raises(torch_file.NotAStateDict, match='storage 0 holds 1 of its 10 elements'):
    torch_file.read_state_dict(damaged)


def _globals(pickled: bytes) -> set[str]:
  return {arg for op, arg, _ in pickletools.genops(pickled) if op.name == 'GLOBAL'}


def test_written_files_read_back_exactly_and_name_only_what_pytorchs_own_do(tmp_path):
  original = torch_file.read_state_dict(DATA / 'formats.pth')
  path = tmp_path / 'written.pth'
  torch_save.write_state_dict(path, original)
  again = torch_file.read_state_dict(path)
  assert list(again) == list(original)
  for name, value in original.items():
    assert again[name].dtype == value.dtype and again[name].shape == value.shape, name
    np.testing.assert_array_equal(again[name], value, err_msg=name)
  with zipfile.ZipFile(path) as ours, zipfile.ZipFile(DATA / 'formats.pth') as theirs:
    # torch's file also holds an nn.Parameter, which a state dict of arrays has no need of.
    assert _globals(ours.read('archive/data.pkl')) == (
        _globals(theirs.read('formats/data.pkl')) - {'torch._utils _rebuild_parameter'})
    for info in ours.infolist():   # each entry's bytes at a multiple of 64, as torch.save's
      ours.fp.seek(info.header_offset)
      header = ours.fp.read(30)
      name_length, extra_length = struct.unpack('<HH', header[26:30])
      assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0, info.filename


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch is not installed (optional: it checks that '
                    'torch.load reads the files written here)')
def test_pytorch_loads_written_files_with_weights_only(tmp_path):
  import torch
  original = torch_file.read_state_dict(DATA / 'formats.pth')
  path = tmp_path / 'written.pth'
  torch_save.write_state_dict(path, original)
  loaded = torch.load(path, weights_only=True)
  reference = torch.load(DATA / 'formats.pth', weights_only=True)
  assert list(loaded) == list(reference)
  for name in reference:
    assert torch.equal(loaded[name], reference[name].detach()), name


# Files made by hand, as a damaged or hostile one could be: each tensor
# (storage key, offset, size, stride); each storage (type, numel, bytes).
def _pickled(value) -> bytes:
  return pickle.dumps(value, protocol=2)[2:-1]   # its opcodes, without PROTO and STOP


def _crafted(path, tensors: dict, storages: dict, compress=zipfile.ZIP_STORED,
             pickle_bytes: bytes | None = None):
  ops = [pickle.PROTO + b'\x02', pickle.GLOBAL + b'collections\nOrderedDict\n',
         pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK]
  for name, (key, offset, size, stride) in tensors.items():
    kind, numel, _ = storages[key]
    ops += [_pickled(name), pickle.GLOBAL + b'torch._utils\n_rebuild_tensor_v2\n',
            pickle.MARK + pickle.MARK, _pickled('storage'),
            pickle.GLOBAL + f'torch\n{kind}\n'.encode(), _pickled(key), _pickled('cpu'),
            _pickled(numel), pickle.TUPLE + pickle.BINPERSID, _pickled(offset),
            _pickled(tuple(size)), _pickled(tuple(stride)), pickle.NEWFALSE,
            pickle.EMPTY_TUPLE + pickle.TUPLE + pickle.REDUCE]
  ops += [pickle.SETITEMS + pickle.STOP]
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', pickle_bytes or b''.join(ops))
    for key, (_, _, data) in storages.items():
      info = zipfile.ZipInfo(f'archive/data/{key}')
      info.compress_type = compress
      with archive.open(info, 'w') as f:   # written in pieces: no whole copy in memory
        for piece in data if isinstance(data, list) else [data]:
          f.write(piece)
  return path


def _refusal(path, peak_below=8 * 2**20, **kwargs) -> str:
  """The one-line message reading `path` is refused with, having allocated less than
  `peak_below` bytes on the way."""
  tracemalloc.start()
  try:
    with pytest.raises(errors.UserFacingError) as refused:
      torch_file.read_state_dict(path, **kwargs)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < peak_below, f'{peak:,} bytes allocated before: {refused.value}'
  message = str(refused.value)
  assert '\n' not in message and str(path) in message
  return message


def test_a_tensor_claiming_terabytes_by_a_stride_of_zero_is_refused_unallocated(tmp_path):
  one = np.float32(1).tobytes()
  path = _crafted(tmp_path / 'stride0.pth', {'w': ('0', 0, (2**20, 2**20), (0, 0))},
                  {'0': ('FloatStorage', 1, one)})
  assert path.stat().st_size < 1000
  assert re.search(r"tensors take 4,398,046,511,104 bytes \(w: \(1048576, 1048576\), strides "
                   r"\(0, 0\)\), more than the 2,147,483,648", _refusal(path))
  # What the caller's layout refuses is refused first: the keys, before any size.
  def layout(shapes):
    assert shapes == {'w': (2**20, 2**20)}
    raise errors.UserFacingError(f'{path} has no conv1')
  assert _refusal(path, check_shapes=layout) == f'{path} has no conv1'


def test_the_2gib_stride_0_file_is_refused_by_its_keys_before_any_tensor(tmp_path):
  path = _crafted(tmp_path / 'claims_2gib.pth', {'w': ('0', 0, (2**29,), (0,))},
                  {'0': ('FloatStorage', 1, np.float32(1).tobytes())})
  tracemalloc.start()
  try:
    with pytest.raises(torchvision_layout.LayoutError, match="not a state dict of torchvision's"):
      weights.import_weights(str(path), str(tmp_path / 'work'), alexnet.get_config('torchvision'))
    assert tracemalloc.get_traced_memory()[1] < 64 * 2**20
  finally:
    tracemalloc.stop()
  assert not (tmp_path / 'work').exists()


def test_a_deflated_entry_beyond_the_ratio_is_refused_before_inflating(tmp_path):
  zeros = [bytes(2**20)] * 64   # 64 MiB of zeros deflate to about 64 KB
  path = _crafted(tmp_path / 'bomb.pth', {'w': ('0', 0, (2**24,), (1,))},
                  {'0': ('FloatStorage', 2**24, zeros)}, compress=zipfile.ZIP_DEFLATED)
  assert path.stat().st_size < 2**20
  assert re.search(r'entry archive/data/0 unpacks [\d,]+ bytes to 67,108,864, more than 20 '
                   'times its size', _refusal(path))
  # The sizes the zip declares are bounded too, whatever the ratio.
  small = _crafted(tmp_path / 'small.pth', {'w': ('0', 0, (2**14,), (1,))},
                   {'0': ('FloatStorage', 2**14, bytes(2**16))}, compress=zipfile.ZIP_DEFLATED)
  assert re.search(r'unpacks to 65,[\d,]+ bytes, more than the 10,000 a state dict read here '
                   'may be', _refusal(small, max_bytes=10_000))


def test_strides_and_storage_sizes_that_do_not_fit_are_refused(tmp_path):
  ten = np.arange(10, dtype=np.float32).tobytes()
  cases = {
      # offset 4 + (3 - 1) * 3 = element 10 of a storage of 10
      'outside': ({'w': ('0', 4, (3,), (3,))}, {'0': ('FloatStorage', 10, ten)},
                  r'size \(3,\) and strides \(3,\) at offset 4 lies outside its storage of 10'),
      'longer': ({'w': ('0', 0, (10,), (1,))}, {'0': ('FloatStorage', 10, ten + ten)},
                 r'storage 0 holds 80 bytes where its 10 elements of float32 take 40'),
      'shorter': ({'w': ('0', 0, (10,), (1,))}, {'0': ('DoubleStorage', 10, ten)},
                  r'storage 0 holds 5 of its 10 elements; the file is truncated'),
      'negative': ({'w': ('0', 0, (2, 5), (-5, 1))}, {'0': ('FloatStorage', 10, ten)},
                   r'describes a tensor as \(0, \(2, 5\), \(-5, 1\)\).* the file is damaged'),
  }
  for name, (tensors, storages, message) in cases.items():
    assert re.search(message, _refusal(_crafted(tmp_path / f'{name}.pth', tensors, storages))), name
  # The same view inside its storage is read as PyTorch reads it.
  fits = torch_file.read_state_dict(_crafted(tmp_path / 'fits.pth', {'w': ('0', 3, (3,), (3,))},
                                             {'0': ('FloatStorage', 10, ten)}))
  np.testing.assert_array_equal(fits['w'], [3, 6, 9])


def test_a_file_beyond_the_size_bound_is_refused_unread(tmp_path):
  size = (DATA / 'owt_narrow.pth').stat().st_size
  assert re.search(rf'is {size:,} bytes, more than the 10,000 a state dict read here may be',
                   _refusal(DATA / 'owt_narrow.pth', max_bytes=10_000, peak_below=size // 2))


def test_a_pickle_that_runs_code_or_calls_what_it_names_wrongly_is_refused(tmp_path):
  marker = tmp_path / 'ran'
  command = _pickled(f'touch {marker}')
  runs = _crafted(tmp_path / 'runs.pth', {}, {}, pickle_bytes=(
      pickle.PROTO + b'\x02' + pickle.GLOBAL + b'os\nsystem\n' + pickle.MARK + command +
      pickle.TUPLE + pickle.REDUCE + pickle.STOP))
  assert 'holds a os.system object' in _refusal(runs)
  assert not marker.exists()
  # torch.FloatStorage called as a function, as no state dict does.
  called = _crafted(tmp_path / 'called.pth', {}, {}, pickle_bytes=(
      pickle.PROTO + b'\x02' + pickle.GLOBAL + b'torch\nFloatStorage\n' + pickle.EMPTY_TUPLE +
      pickle.REDUCE + pickle.STOP))
  assert re.search(r'is damaged \(TypeError: .*\): download or save it again', _refusal(called))
