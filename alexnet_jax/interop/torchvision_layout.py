"""The `owt` model's parameters <-> torchvision's AlexNet state dict.

torchvision's AlexNet is `owt`: convolutions features.0/3/6/8/10, linear layers
classifier.1/4/6, and an AdaptiveAvgPool2d((6, 6)) before the first linear one. Its
convolution weights are OIHW (ours HWIO), its linear weights (out, in) (ours (in, out)),
and it flattens conv5's 6x6 maps channel first (C, H, W) where flax flattens NHWC
(H, W, C): fc6's rows are reordered between the two.
"""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models
from alexnet_jax.errors import UserFacingError

LAYERS = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
          'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
          'fc7': 'classifier.4', 'fc8': 'classifier.6'}
POOLED = 6   # torchvision pools conv5's maps to 6x6 whatever the image size
_CONV1_FEATURES = models.VARIANTS['owt'].conv_features[0]


class LayoutError(UserFacingError):
  """A state dict that is not torchvision's AlexNet, or a model torchvision cannot hold."""


def param_shapes(width: float, num_classes: int) -> dict:
  """{layer: {'kernel': shape, 'bias': shape}} of `owt` at `width` on 224x224 images."""
  model = models.AlexNet(num_classes=num_classes, variant='owt', width=width)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))['params']
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


def _torch_shape(kernel_shape: tuple) -> tuple:
  """The shape torchvision gives a layer whose kernel is `kernel_shape` here."""
  if len(kernel_shape) == 4:   # HWIO -> OIHW
    h, w, i, o = kernel_shape
    return (o, i, h, w)
  return tuple(reversed(kernel_shape))


def check_shapes(shapes: dict, source: str) -> tuple[float, int]:
  """(width, number of classes) of a state dict of torchvision's AlexNet, from its tensors'
  shapes alone ({name: shape}), so that a file is refused before its tensors are read.

  The width is conv1's channels over 64 (1.0 for torchvision's own file), the classes
  fc8's outputs. Raises LayoutError naming the keys or shapes that are not an `owt`'s.
  """
  shapes = _without_data_parallel_prefix(shapes)
  expected = {f'{t}.{kind}' for t in LAYERS.values() for kind in ('weight', 'bias')}
  missing, unexpected = sorted(expected - set(shapes)), sorted(set(shapes) - expected)
  if missing or unexpected:
    found = [f'lacks {_listed(missing)}'] if missing else []
    found += [f'has {_listed(unexpected)}, which it does not'] if unexpected else []
    raise LayoutError(
        f"{source} is not a state dict of torchvision's AlexNet: it {' and '.join(found)} "
        f"(torchvision's AlexNet has exactly {', '.join(LAYERS.values())}, each with .weight "
        'and .bias). Import the state dict of torchvision.models.alexnet().')
  conv1, fc8 = tuple(shapes['features.0.weight']), tuple(shapes['classifier.6.weight'])
  if len(conv1) != 4 or len(fc8) != 2 or not conv1[0] or not fc8[0]:
    raise LayoutError(f"{source} has torchvision's AlexNet's keys but a features.0.weight of "
                      f'{conv1} and a classifier.6.weight of {fc8}, where a convolution\'s '
                      'weight is (out, in, h, w) and a linear one (out, in). Import the state '
                      'dict of torchvision.models.alexnet().')
  width, num_classes = conv1[0] / _CONV1_FEATURES, fc8[0]
  ours = param_shapes(width, num_classes)
  differences = []
  for layer, torch_name in LAYERS.items():
    for kind, our_kind in (('weight', 'kernel'), ('bias', 'bias')):
      want = _torch_shape(ours[layer][our_kind])
      have = tuple(shapes[f'{torch_name}.{kind}'])
      if want != have:
        differences.append(f'{torch_name}.{kind}: {have} in the file, {want} expected')
  if differences:
    raise LayoutError(
        f"{source} has torchvision's AlexNet's keys but not its shapes: for an AlexNet of "
        f'{conv1[0]} conv1 channels (width {width:g}) and {num_classes} classes, '
        f'{"; ".join(differences[:4])}{" ..." if len(differences) > 4 else ""}. Import the '
        'state dict of torchvision.models.alexnet().')
  return width, num_classes


def _without_data_parallel_prefix(state_dict: dict) -> dict:
  if state_dict and all(k.startswith('module.') for k in state_dict):   # nn.DataParallel's
    return {k[len('module.'):]: v for k, v in state_dict.items()}
  return state_dict


def from_torchvision(state_dict: dict, source: str) -> tuple[dict, float, int]:
  """(owt params, width, number of classes) of torchvision's AlexNet state dict; raises
  LayoutError as `check_shapes` does."""
  state_dict = _without_data_parallel_prefix(state_dict)
  width, num_classes = check_shapes({k: v.shape for k, v in state_dict.items()}, source)
  params = {}
  for layer, torch_name in LAYERS.items():
    weight = np.asarray(state_dict[f'{torch_name}.weight'], np.float32)
    if layer == 'fc6':
      out, flat = weight.shape
      kernel = (weight.reshape(out, flat // POOLED**2, POOLED, POOLED)   # (O, C, H, W)
                .transpose(2, 3, 1, 0).reshape(flat, out))              # rows (H, W, C)
    elif weight.ndim == 4:
      kernel = weight.transpose(2, 3, 1, 0)                               # OIHW -> HWIO
    else:
      kernel = weight.T
    params[layer] = {'kernel': np.ascontiguousarray(kernel),
                     'bias': np.asarray(state_dict[f'{torch_name}.bias'], np.float32)}
  return params, width, num_classes


def to_torchvision(params: dict) -> dict[str, np.ndarray]:
  """torchvision's AlexNet state dict of `owt` params (float32, in torchvision's key order).

  Raises LayoutError for a model whose conv5 maps are not 6x6 (image_size other than 224):
  torchvision's fc6 takes 6x6 maps.
  """
  if sorted(params) != sorted(LAYERS):
    raise LayoutError(f'These parameters have layers {sorted(params)}, not those of owt '
                      f'({sorted(LAYERS)}).')
  channels = params['conv5']['kernel'].shape[-1]
  flat, out = params['fc6']['kernel'].shape
  if flat != channels * POOLED**2:
    side = int(round((flat / channels) ** 0.5))
    raise LayoutError(
        f"This model's fc6 takes {side}x{side} conv5 maps; torchvision's AlexNet pools them to "
        f'{POOLED}x{POOLED} (image_size 224) before fc6, so only a model trained on 224x224 '
        'patches has its layout.')
  state_dict = {}
  for layer, torch_name in LAYERS.items():
    kernel = np.asarray(params[layer]['kernel'], np.float32)
    if layer == 'fc6':
      weight = (kernel.reshape(POOLED, POOLED, channels, out)
                .transpose(3, 2, 0, 1).reshape(out, flat))             # (O, C, H, W), flat
    elif kernel.ndim == 4:
      weight = kernel.transpose(3, 2, 0, 1)                               # HWIO -> OIHW
    else:
      weight = kernel.T
    state_dict[f'{torch_name}.weight'] = np.ascontiguousarray(weight)
    state_dict[f'{torch_name}.bias'] = np.asarray(params[layer]['bias'], np.float32)
  return state_dict


def _listed(names: list[str]) -> str:
  if not names:
    return 'nothing'
  return ', '.join(names[:6]) + (f' and {len(names) - 6} more' if len(names) > 6 else '')
