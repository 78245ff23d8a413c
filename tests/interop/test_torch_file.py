"""PyTorch's state-dict files read and written without PyTorch, against files PyTorch wrote
(tests/fixtures, made by tests/fixtures/make_torch_files.py) and the numbers PyTorch gave for them."""

import importlib.util
import json
import pathlib
import pickletools
import struct
import zipfile

import numpy as np
import pytest

from alexnet_jax.interop import torch_file

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
  torch_file.write_state_dict(path, original)
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
  torch_file.write_state_dict(path, original)
  loaded = torch.load(path, weights_only=True)
  reference = torch.load(DATA / 'formats.pth', weights_only=True)
  assert list(loaded) == list(reference)
  for name in reference:
    assert torch.equal(loaded[name], reference[name].detach()), name
