"""torchvision's AlexNet weights in and out: a file PyTorch wrote imports to the logits
PyTorch computed and to those of a numpy forward pass; export then import is the identity;
bad files and bad workdirs are named."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from alexnet_jax import errors, train
from alexnet_jax.commands import weights
from alexnet_jax.interop import class_names, torch_file, torch_save, torchvision_layout
from alexnet_jax.workdir import model_record, trained
from configs import alexnet
from tests.conftest import assert_same_tree, process_env, saved_state

DATA = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'
ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = DATA / 'owt_narrow.pth'   # torchvision's AlexNet at 1/64 of its width, 10 classes
HAS_TORCH = importlib.util.find_spec('torch') is not None


def formula_images() -> np.ndarray:
  """float32 [2, 224, 224, 3], the formula tests/fixtures/make_torch_files.py fed PyTorch."""
  n, h, w, c = np.meshgrid(np.arange(2), np.arange(224), np.arange(224), np.arange(3),
                           indexing='ij')
  return (2.0 * np.sin(0.05 * h * (c + 1) + 0.07 * w - 1.3 * n + c)).astype(np.float32)


def numpy_alexnet(state: dict, images: np.ndarray) -> np.ndarray:
  """torchvision's AlexNet.forward in numpy, NCHW, on its own state dict."""
  x = images.transpose(0, 3, 1, 2).astype(np.float64)

  def conv(x, layer, stride, pad):
    w, b = state[f'features.{layer}.weight'], state[f'features.{layer}.bias']
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.maximum(np.einsum('nchwij,ocij->nohw', windows, w) + b[None, :, None, None], 0)

  def pool(x):
    return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))

  x = pool(conv(x, 0, 4, 2))
  x = pool(conv(x, 3, 1, 2))
  x = pool(conv(conv(conv(x, 6, 1, 1), 8, 1, 1), 10, 1, 1))
  assert x.shape[2:] == (6, 6)   # AdaptiveAvgPool2d((6, 6)) leaves 6x6 maps as they are
  x = x.reshape(len(x), -1)      # channels first, as torch.flatten
  for layer in (1, 4):
    x = np.maximum(x @ state[f'classifier.{layer}.weight'].T + state[f'classifier.{layer}.bias'],
                   0)
  return x @ state['classifier.6.weight'].T + state['classifier.6.bias']


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('imported'))
  done = weights.import_weights(str(FIXTURE), workdir, alexnet.get_config('torchvision'))
  return workdir, done


def _logits(workdir: str, images: np.ndarray) -> np.ndarray:
  record = model_record.read(workdir)
  params, _ = trained.restore_saved_params(workdir, 'latest')
  model = train.create_model(record.config, int(params['fc8']['bias'].shape[0]))
  return np.asarray(model.apply({'params': params}, images, train=False))


def test_the_numpy_forward_pass_gives_pytorchs_logits():
  torch_logits = np.array(json.loads((DATA / 'owt_narrow.json').read_text())['logits'])
  reference = numpy_alexnet(torch_file.read_state_dict(FIXTURE), formula_images())
  np.testing.assert_allclose(reference, torch_logits, rtol=1e-5, atol=1e-6)


def test_an_imported_file_gives_the_logits_of_pytorch_and_of_numpy(imported):
  workdir, done = imported
  assert done['width'] == 1 / 64 and done['classes'] == 10
  images = formula_images()
  ours = _logits(workdir, images)
  torch_logits = np.array(json.loads((DATA / 'owt_narrow.json').read_text())['logits'])
  np.testing.assert_allclose(ours, torch_logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours, numpy_alexnet(torch_file.read_state_dict(FIXTURE), images),
                             rtol=1e-5, atol=1e-6)
  record = model_record.read(workdir)
  assert record.config.model == 'owt' and record.config.width == 1 / 64
  assert list(record.config.mean_rgb) == [123.675, 116.28, 103.53]   # torchvision's Normalize
  assert record.class_names == () and record.source == str(FIXTURE)


def test_export_then_import_is_the_identity(imported, tmp_path):
  workdir, _ = imported
  exported = tmp_path / 'exported.pth'
  weights.export_weights(workdir, str(exported), 'latest')
  original, again = torch_file.read_state_dict(FIXTURE), torch_file.read_state_dict(exported)
  assert list(again) == list(original)   # torchvision's key order
  for name in original:
    np.testing.assert_array_equal(again[name], original[name], err_msg=name)
  second = str(tmp_path / 'second')
  weights.import_weights(str(exported), second, alexnet.get_config('torchvision'))
  assert_same_tree(saved_state(second, 0)['params'], saved_state(workdir, 0)['params'])


def test_a_1000_class_file_records_imagenets_classes(tmp_path):
  rng = np.random.default_rng(0)
  state = {name: rng.normal(size=shape).astype(np.float32) for name, shape in
           torch_shapes(width=1 / 64, num_classes=1000).items()}
  torch_save.write_state_dict(tmp_path / 'wide.pth', state)
  weights.import_weights(str(tmp_path / 'wide.pth'), str(tmp_path / 'work'),
                         alexnet.get_config('torchvision'))
  names = model_record.read(str(tmp_path / 'work')).class_names
  assert len(names) == 1000 and names[0] == 'n01440764' and names[217] == 'n02102040'
  assert class_names.display_names(names, 1000)[0] == 'tench, Tinca tinca'


def torch_shapes(width: float, num_classes: int) -> dict:
  """torchvision's shapes written out by hand: (out, in, h, w) and (out, in)."""
  c = [max(1, round(f * width)) for f in (64, 192, 384, 256, 256)]
  hidden = round(4096 * width)
  shapes = {}
  for i, (layer, k) in enumerate(zip((0, 3, 6, 8, 10), (11, 5, 3, 3, 3))):
    shapes[f'features.{layer}.weight'] = (c[i], 3 if i == 0 else c[i - 1], k, k)
    shapes[f'features.{layer}.bias'] = (c[i],)
  for layer, (out, inputs) in {1: (hidden, c[4] * 36), 4: (hidden, hidden),
                               6: (num_classes, hidden)}.items():
    shapes[f'classifier.{layer}.weight'], shapes[f'classifier.{layer}.bias'] = (out, inputs), (out,)
  return shapes


def test_another_architecture_is_named_with_its_keys_or_shapes(tmp_path):
  with pytest.raises(torchvision_layout.LayoutError,
                     match=r"not a state dict of torchvision's AlexNet: it lacks classifier\.1\."
                           r"bias.* and has bfloat16, big, bool"):
    weights.import_weights(str(DATA / 'formats.pth'), str(tmp_path / 'a'),
                           alexnet.get_config('torchvision'))
  state = torch_file.read_state_dict(FIXTURE)
  state['features.3.weight'] = np.zeros((5, 1, 5, 5), np.float32)
  state['features.3.bias'] = np.zeros(5, np.float32)
  torch_save.write_state_dict(tmp_path / 'wider_conv2.pth', state)
  with pytest.raises(torchvision_layout.LayoutError,
                     match=r'features\.3\.weight: \(5, 1, 5, 5\) in the file, \(3, 1, 5, 5\) '
                           r'expected; features\.3\.bias: \(5,\) in the file, \(3,\) expected\. '):
    weights.import_weights(str(tmp_path / 'wider_conv2.pth'), str(tmp_path / 'b'),
                           alexnet.get_config('torchvision'))
  assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()   # nothing written


def test_a_workdir_with_checkpoints_is_refused_and_left_as_it_was(imported):
  workdir, _ = imported
  before = saved_state(workdir, 0)
  with pytest.raises(errors.ConfigError, match='already holds checkpoints: import into a new'):
    weights.import_weights(str(FIXTURE), workdir, alexnet.get_config('torchvision'))
  assert_same_tree(saved_state(workdir, 0), before)


@pytest.mark.parametrize('choice', [{'activation': 'tanh'}, {'lrn': True},
                                    {'pooling': 'non_overlapping'}])
def test_an_owt_with_choices_torchvision_lacks_is_not_exported(imported, tmp_path, choice):
  workdir, _ = imported
  config = alexnet.get_config('torchvision')
  config.update(choice)
  (field, value), = choice.items()
  with pytest.raises(errors.ConfigError, match=f"an owt AlexNet with {field}={value!r}: "
                     "torchvision's AlexNet has ReLUs, no LRN and overlapping pools"):
    weights.export_weights(workdir, str(tmp_path / 'out.pth'), 'latest', config)
  assert not (tmp_path / 'out.pth').exists()


def test_only_an_owt_on_224_patches_exports(tmp_path):
  shapes = torchvision_layout.param_shapes(width=1 / 64, num_classes=10)
  params = {layer: {k: np.zeros(s, np.float32) for k, s in layer_shapes.items()}
            for layer, layer_shapes in shapes.items()}
  params['fc6']['kernel'] = np.zeros((4 * 2 * 2, 64), np.float32)   # 2x2 maps: 96x96 patches
  with pytest.raises(torchvision_layout.LayoutError, match='fc6 takes 2x2 conv5 maps'):
    torchvision_layout.to_torchvision(params)


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch is not installed (optional: it checks that '
                    "torchvision's AlexNet loads an exported file)")
def test_pytorch_loads_an_export_into_torchvisions_alexnet(imported, tmp_path):
  import torch
  sys.path.insert(0, str(DATA))
  from make_torch_files import OWT_SIZES, TorchvisionAlexNet
  workdir, _ = imported
  weights.export_weights(workdir, str(tmp_path / 'exported.pth'), 'latest')
  model = TorchvisionAlexNet(**OWT_SIZES).eval()
  model.load_state_dict(torch.load(tmp_path / 'exported.pth', weights_only=True), strict=True)
  with torch.no_grad():
    logits = model(torch.from_numpy(formula_images()).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(logits, _logits(workdir, formula_images()), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_import_command(tmp_path):
  env = process_env()
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.weights', 'import', f'--from={FIXTURE}',
       f'--workdir={tmp_path / "work"}'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'owt AlexNet, width 0.015625, 10 classes' in result.stdout
  assert f'python -m alexnet_jax.commands.classify --workdir={tmp_path / "work"}' in result.stdout
