"""AlexNet as the paper built it (two towers) and as torchvision ships it (one tower).

Images are NHWC. The layer names are the paper's: conv1..conv5, fc6..fc8.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax import layers

# Both variants' layers, in order: the names of their parameters.
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


@dataclasses.dataclass(frozen=True)
class Variant:
  """What distinguishes one AlexNet from another; the layer geometry is shared."""
  conv_features: tuple[int, int, int, int, int]
  conv_groups: tuple[int, int, int, int, int]   # feature_group_count of conv1..conv5
  towers: int             # channel counts stay divisible by this under a width multiplier
  lrn: bool               # LRN after the ReLU of conv1 and conv2
  initialization: str     # the default of `AlexNet.initialization`


VARIANTS = {
    # The paper's network: two towers; conv2, conv4 and conv5 see only their own tower.
    'paper': Variant((96, 256, 384, 384, 256), (1, 2, 1, 2, 2), towers=2, lrn=True,
                     initialization='caffe'),
    # "One weird trick" (Krizhevsky 2014), as torchvision's alexnet: one tower, no LRN.
    'owt': Variant((64, 192, 384, 256, 256), (1, 1, 1, 1, 1), towers=1, lrn=False,
                   initialization='pytorch'),
    # The paper's one-GPU net (section 6, footnote): one tower, half the kernels of conv1 to
    # conv4, but conv5 and the fully connected layers as large as the two towers' together,
    # "to make the two nets have approximately the same number of parameters".
    'paper_one_tower': Variant((48, 128, 192, 192, 256), (1, 1, 1, 1, 1), towers=1, lrn=True,
                               initialization='caffe'),
}

# (kernel size, stride, padding) of conv1..conv5; padding 2 on conv1 turns 224 into 55.
_CONV_GEOMETRY = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
_POOL_AFTER = (0, 1, 4)          # max pooling after conv1, conv2 and conv5
_POOL_WINDOW, _POOL_STRIDE = 3, 2   # the paper's overlapping pools: 3x3 windows, stride 2


def map_sizes(image_size: int) -> list[tuple[str, int]]:
  """(layer, side of its output maps) for an `image_size` input, as the geometry above makes
  them; a side of 0 or less means the maps vanished there."""
  sizes, side = [], image_size
  for i, (kernel, stride, padding) in enumerate(_CONV_GEOMETRY):
    side = (side + 2 * padding - kernel) // stride + 1 if side + 2 * padding >= kernel else 0
    sizes.append((f'conv{i + 1}', side))
    if i in _POOL_AFTER:
      side = (side - _POOL_WINDOW) // _POOL_STRIDE + 1 if side >= _POOL_WINDOW else 0
      sizes.append((f'pool after conv{i + 1}', side))
  return sizes


def smallest_image_size() -> int:
  """The smallest input whose maps last to fc6 (63: conv5's pooled maps are then 1x1)."""
  size = 1
  while min(side for _, side in map_sizes(size)) < 1:
    size += 1
  return size


# The layers whose biases the paper sets to 1 (section 5); the others start at 0.
_PAPER_BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
# How a layer's kernel and bias start (`AlexNet.initialization`):
#   paper    the paper's section 5: weights N(0, 0.01), biases of 1 in _PAPER_BIAS_ONE.
#   caffe    BVLC Caffe's reference AlexNet (models/bvlc_alexnet): the paper's, but biases of
#            0.1 where the paper has 1 and fc6/fc7 weights N(0, 0.005). Its readme: "initializing
#            non-zero biases to 0.1 instead of 1 (found necessary for training, as
#            initialization to 1 gave flat loss)".
#   pytorch  PyTorch's default (torchvision's AlexNet): uniform, variance 1/(3 fan_in), biases 0.
INITIALIZATIONS = ('paper', 'caffe', 'pytorch')
HIDDEN_UNITS = 4096
# The rewrites of the step (fields of `AlexNet` and of the config) and their choices, the
# first of each today's form.
OPTIONS = {'conv1': layers.CONV1_FORMS, 'max_pool': layers.MAX_POOLS,
           'lrn_gradient': layers.LRN_GRADIENTS, 'tower_layout': layers.TOWER_LAYOUTS}
# The choices the paper measures in section 3 (fields of `AlexNet` and of the config), each
# with the paper's first. Unlike the rewrites above, each changes the function.
ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh}
# 'non_overlapping': 2x2 windows, stride 2, "which produces output of equivalent dimensions".
POOLINGS = ('overlapping', 'non_overlapping')
# The fields that name a choice (LRN is a bool), with their values.
CHOICES = {'activation': tuple(ACTIVATIONS), 'pooling': POOLINGS}


def _split(features: int, split: int, what: str) -> int:
  """This device's share of a layer's `features` split over `split` devices."""
  if features % split:
    raise ValueError(f'{what}: {features} do not split evenly over a model axis of {split} '
                     'devices; choose a model axis size that divides them.')
  return features // split


def _scaled(features: int, width: float, multiple: int) -> int:
  return max(multiple, int(round(features * width / multiple)) * multiple)


class AlexNet(nn.Module):
  """AlexNet; `variant` is one of VARIANTS, `width` scales every layer's size.

  `dtype` is the compute dtype (e.g. bfloat16); parameters stay float32 and
  the logits are returned in float32.

  With `model_axis` set, this is the per-device code of a model split over
  that mesh axis (`placement.py`), called inside `jax.shard_map` with
  this device's slice of every split layer's parameters:
  - paper: one tower per device. conv1, conv2, conv4 and conv5 and both
    LRNs see only this device's maps; the towers' maps are gathered before
    conv3, fc6, fc7 and fc8, as between the paper's two GPUs.
  - owt ("one weird trick"): the convolutions are data parallel, each device
    on its own examples; the fully connected layers are split, so the
    devices gather each other's conv5 outputs (examples) before fc6 and each
    other's features before fc7 and fc8.
  Each device computes its slice of fc8's outputs; the logits are gathered.
  """
  num_classes: int = 1000
  variant: str = 'paper'
  width: float = 1.0
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  initialization: str | None = None   # one of INITIALIZATIONS; None: the variant's own
  model_axis: str | None = None
  model_axis_size: int = 1
  # Rewrites of the step: each computes the same function otherwise (`layers.py`); their
  # defaults are the forms measured so far (BENCHMARKS.md, "The step's rewrites").
  conv1: str = 'direct'             # one of layers.CONV1_FORMS
  max_pool: str = 'reduce_window'   # one of layers.MAX_POOLS
  lrn_gradient: str = 'autodiff'    # one of layers.LRN_GRADIENTS
  tower_layout: str = 'joined'      # one of layers.TOWER_LAYOUTS
  # The paper's choices (section 3), which change the function.
  activation: str = 'relu'          # one of ACTIVATIONS, after every layer but fc8
  lrn: bool | None = None           # LRN after conv1 and conv2; None: the variant's own
  pooling: str = 'overlapping'      # one of POOLINGS

  def _inits(self, name: str):
    scheme = self.initialization or VARIANTS[self.variant].initialization
    if scheme == 'pytorch':
      return dict(kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                  bias_init=nn.initializers.zeros)
    if scheme not in ('paper', 'caffe'):
      raise ValueError(f'Unknown initialization {scheme!r}; choose one of {INITIALIZATIONS}.')
    caffe = scheme == 'caffe'
    bias = (0.1 if caffe else 1.0) if name in _PAPER_BIAS_ONE else 0.0
    stddev = 0.005 if caffe and name in ('fc6', 'fc7') else 0.01
    return dict(kernel_init=nn.initializers.normal(stddev=stddev),
                bias_init=nn.initializers.constant(bias))

  def _gather(self, x, axis: int = -1):
    """This device's slice of `x` along `axis` joined with the other devices' of `model_axis`."""
    if not self.model_axis or self.model_axis_size == 1:
      return x
    return lax.all_gather(x, self.model_axis, axis=axis % x.ndim, tiled=True)

  def _check_options(self):
    for field, choices in {**OPTIONS, **CHOICES}.items():
      if getattr(self, field) not in choices:
        raise ValueError(f'AlexNet: unknown {field} {getattr(self, field)!r}; choose one of '
                         f'{choices}.')

  def _convolutions(self, x, v: Variant, split: int, towers_on_devices: bool):
    """conv1..conv5, each with its ReLU, LRN and pooling: the maps fc6 reads."""
    # The towers' maps as a list from conv1 to conv5 (one device holding both towers).
    apart = v.towers if (self.tower_layout == 'apart' and v.towers > 1
                         and not towers_on_devices) else 0
    lrn_groups = 1 if apart else v.towers // split if towers_on_devices else v.towers
    for i, ((k, stride, pad), features, groups) in enumerate(
        zip(_CONV_GEOMETRY, v.conv_features, v.conv_groups)):
      name = f'conv{i + 1}'
      features = _scaled(features, self.width, v.towers)
      if towers_on_devices:
        if i > 0 and groups == 1:
          x = self._gather(x)   # conv3 sees the maps of both towers
        features, groups = features // split, max(1, groups // split)
      x = layers.TowerConv(features, k, stride, pad, towers=groups, apart=apart,
                           space_to_depth=i == 0 and self.conv1 == 'space_to_depth',
                           dtype=self.dtype, name=name, **self._inits(name))(x)
      x = ([self._after_conv(part, i, lrn_groups) for part in x] if apart
           else self._after_conv(x, i, lrn_groups))
    return jnp.concatenate(x, axis=-1) if apart else x

  def _after_conv(self, x, i: int, lrn_groups: int):
    """The ReLU, and the LRN and max pooling where the paper has them, after conv`i + 1`."""
    lrn, pool = with_lrn(self.variant, self.lrn) and i < 2, i in _POOL_AFTER
    activation = ACTIVATIONS[self.activation]
    if pool and not lrn and self.max_pool == 'slices':
      # The max commutes with the ReLU (and tanh), values and gradients alike: after the pool
      # the activation touches 4x fewer values.
      return activation(self._pool(x))
    x = activation(x)
    if lrn:
      x = layers.LocalResponseNorm(groups=lrn_groups, gradient=self.lrn_gradient)(x)
    return self._pool(x) if pool else x

  def _pool(self, x):
    if self.pooling == 'overlapping':
      return layers.max_pool(x, _POOL_WINDOW, _POOL_STRIDE, self.max_pool)
    # 2x2 windows, stride 2, over the rows and columns the overlapping pool covers: an even
    # side's last row and column are left out, so that the maps are the same size.
    kept = _POOL_STRIDE * ((x.shape[1] - _POOL_WINDOW) // _POOL_STRIDE + 1)
    return layers.max_pool(x[:, :kept, :kept], 2, 2, self.max_pool)

  @nn.compact
  def __call__(self, images, *, train: bool):
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown AlexNet variant {self.variant!r}; choose one of {sorted(VARIANTS)}.')
    v = VARIANTS[self.variant]
    split = self.model_axis_size if self.model_axis else 1
    towers_on_devices = split > 1 and v.towers > 1
    if towers_on_devices and split != v.towers:
      raise ValueError(f'The {self.variant} AlexNet has {v.towers} towers: it splits over a model '
                       f'axis of {v.towers} devices, not {split}.')
    self._check_options()
    x = self._convolutions(images.astype(self.dtype), v, split, towers_on_devices)
    if split > 1:
      # fc6 sees every conv5 map (paper) or every example of the devices along the axis (owt).
      x = self._gather(x, axis=-1 if towers_on_devices else 0)
    x = x.reshape(x.shape[0], -1)
    for name in ('fc6', 'fc7'):
      x = nn.Dense(_split(hidden_units(self.variant, self.width), split, name),
                   dtype=self.dtype, name=name, **self._inits(name))(x)
      x = ACTIVATIONS[self.activation](x)
      # The paper drops the output of each hidden neuron of fc6 and fc7.
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = self._gather(x)   # fc7 and fc8 see every feature of the layer below
    x = nn.Dense(_split(self.num_classes, split, 'fc8 outputs (classes)'), dtype=self.dtype,
                 name='fc8', **self._inits('fc8'))(x)
    return self._gather(x).astype(jnp.float32)


def choices_of(config) -> dict:
  """The paper's choices (`AlexNet`'s activation, lrn and pooling) that `config` makes, LRN
  as on or off; a config recorded before they were fields makes the paper's."""
  return {'activation': config.get('activation', 'relu'),
          'lrn': with_lrn(config.model, config.get('lrn')),
          'pooling': config.get('pooling', POOLINGS[0])}


def with_lrn(variant: str, lrn: bool | None) -> bool | None:
  """Whether `variant` has LRN after conv1 and conv2 when `lrn` (None: the variant's own) says
  so; None for a variant that does not exist (`AlexNet` names it)."""
  if lrn is not None or variant not in VARIANTS:
    return lrn
  return VARIANTS[variant].lrn


def hidden_units(variant: str, width: float) -> int:
  """The number of units of fc6 and of fc7."""
  return _scaled(HIDDEN_UNITS, width, VARIANTS[variant].towers)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))
