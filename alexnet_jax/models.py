"""AlexNet as the paper built it (two towers) and as torchvision ships it (one tower).

Images are NHWC. The layer names are the paper's: conv1..conv5, fc6..fc8.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Both variants' layers, in order: the names of their parameters.
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


class LocalResponseNorm(nn.Module):
  """The paper's response normalisation across adjacent channels (section 3.3).

  b = a / (bias + alpha * sum_{|j-i| <= depth_radius} a_j^2) ** beta

  alpha is not divided by the window size: this is TensorFlow's
  `tf.nn.local_response_normalization`, not Caffe's or PyTorch's LRN. With
  `groups` > 1 the window stops at group boundaries, as on the paper's two
  GPUs, where each GPU normalised only the maps it held.

  `window_sum` picks how the sum over the window is computed; the numbers are
  the same. 'auto' picks, when the step is compiled, the faster one for the
  platform (BENCHMARKS.md): a 0/1 band-matrix product on CPU, where XLA runs
  it and its gradient 2 to 3 times faster than a windowed sum, and a windowed
  sum elsewhere (on an H100 the whole paper step is 1.24x faster with it).
  """
  depth_radius: int = 2
  bias: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75
  groups: int = 1
  window_sum: str = 'auto'   # 'auto', 'band_matmul' or 'reduce_window'

  @nn.compact
  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)  # a^2 sums overflow bfloat16's precision budget.
    channels = x.shape[-1]
    if channels % self.groups:
      raise ValueError(f'LRN: {channels} channels do not split into {self.groups} groups.')
    sums = {name: functools.partial(f, depth_radius=self.depth_radius, groups=self.groups)
            for name, f in (('band_matmul', _band_matmul_window_sum),
                            ('reduce_window', _reduce_window_sum))}
    if self.window_sum == 'auto':
      window_sum = lax.platform_dependent(x * x, cpu=sums['band_matmul'],
                                          default=sums['reduce_window'])
    elif self.window_sum in sums:
      window_sum = sums[self.window_sum](x * x)
    else:
      raise ValueError(f'LRN: unknown window_sum {self.window_sum!r}; choose auto, band_matmul '
                       'or reduce_window.')
    return (x * _inverse_power(self.bias + self.alpha * window_sum, self.beta)).astype(dtype)


def _band_matmul_window_sum(squares, depth_radius: int, groups: int):
  """The window sum as one product with a 0/1 band matrix; HIGHEST keeps it float32."""
  return jnp.matmul(squares, _window_matrix(squares.shape[-1], depth_radius, groups),
                    precision=lax.Precision.HIGHEST)


def _reduce_window_sum(squares, depth_radius: int, groups: int):
  """The window sum as a sliding sum along the channels of each group."""
  *batch, channels = squares.shape
  grouped = squares.reshape(*batch, groups, channels // groups)
  window = (1,) * (grouped.ndim - 1) + (2 * depth_radius + 1,)
  padding = [(0, 0)] * (grouped.ndim - 1) + [(depth_radius, depth_radius)]
  summed = lax.reduce_window(grouped, 0.0, lax.add, window, (1,) * grouped.ndim, padding)
  return summed.reshape(squares.shape)


def _window_matrix(channels: int, depth_radius: int, groups: int) -> np.ndarray:
  """M[j, i] = 1 where channel j is in channel i's window, within one group."""
  i = np.arange(channels)
  group = i // (channels // groups)
  near = np.abs(i[:, None] - i[None, :]) <= depth_radius
  return (near & (group[:, None] == group[None, :])).astype(np.float32)


def _inverse_power(t, beta: float):
  """t ** -beta; for the paper's beta = 3/4 as rsqrt(t) * sqrt(rsqrt(t)), cheaper than pow."""
  if beta == 0.75:
    r = lax.rsqrt(t)
    return r * jnp.sqrt(r)
  return t ** -beta


class TowerConv(nn.Module):
  """A convolution whose channels split into `towers` that never see each other.

  The function and parameters of `nn.Conv(feature_group_count=towers)` (a
  kernel of shape (k, k, in / towers, features) and a bias), computed as one
  convolution per tower whose outputs are concatenated, as the paper's two
  GPUs did. Written this way because XLA's CPU backend runs a grouped
  convolution and its gradients 4 to 6 times slower than the same
  convolutions split (`python -m alexnet_jax.commands.benchmark`, BENCHMARKS.md).
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  towers: int = 1
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k, towers = self.kernel_size, self.towers
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1] // towers, self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    outputs = [
        lax.conv_general_dilated(x_tower, kernel_tower, (self.stride, self.stride),
                                 [(self.padding, self.padding)] * 2,
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        for x_tower, kernel_tower in zip(jnp.split(x, towers, axis=-1),
                                         jnp.split(kernel, towers, axis=-1))]
    return (outputs[0] if towers == 1 else jnp.concatenate(outputs, axis=-1)) + bias


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
}

# (kernel size, stride, padding) of conv1..conv5; padding 2 on conv1 turns 224 into 55.
_CONV_GEOMETRY = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
_POOL_AFTER = (0, 1, 4)          # overlapping 3x3 / stride-2 max pooling after conv1, conv2, conv5
_POOL_WINDOW, _POOL_STRIDE = 3, 2


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


def _split(features: int, split: int, what: str) -> int:
  """This device's share of a layer's `features` split over `split` devices."""
  if features % split:
    raise ValueError(f'{what}: {features} do not split evenly over a model axis of {split} '
                     'devices; choose a model axis size that divides them.')
  return features // split


def _scaled(features: int, width: float, multiple: int) -> int:
  return max(multiple, int(round(features * width / multiple)) * multiple)


class AlexNet(nn.Module):
  """AlexNet; `variant` is 'paper' or 'owt', `width` scales every layer's size.

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
    x = images.astype(self.dtype)
    for i, ((k, stride, pad), features, groups) in enumerate(
        zip(_CONV_GEOMETRY, v.conv_features, v.conv_groups)):
      name = f'conv{i + 1}'
      features = _scaled(features, self.width, v.towers)
      if towers_on_devices:
        if i > 0 and groups == 1:
          x = self._gather(x)   # conv3 sees the maps of both towers
        features, groups = features // split, max(1, groups // split)
      x = TowerConv(features, k, stride, pad, towers=groups, dtype=self.dtype, name=name,
                    **self._inits(name))(x)
      x = nn.relu(x)
      if v.lrn and i < 2:
        x = LocalResponseNorm(groups=v.towers // split if towers_on_devices else v.towers)(x)
      if i in _POOL_AFTER:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    if split > 1:
      # fc6 sees every conv5 map (paper) or every example of the devices along the axis (owt).
      x = self._gather(x, axis=-1 if towers_on_devices else 0)
    x = x.reshape(x.shape[0], -1)
    for name in ('fc6', 'fc7'):
      x = nn.Dense(_split(hidden_units(self.variant, self.width), split, name),
                   dtype=self.dtype, name=name, **self._inits(name))(x)
      x = nn.relu(x)
      # The paper drops the output of each hidden neuron of fc6 and fc7.
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = self._gather(x)   # fc7 and fc8 see every feature of the layer below
    x = nn.Dense(_split(self.num_classes, split, 'fc8 outputs (classes)'), dtype=self.dtype,
                 name='fc8', **self._inits('fc8'))(x)
    return self._gather(x).astype(jnp.float32)


def hidden_units(variant: str, width: float) -> int:
  """The number of units of fc6 and of fc7."""
  return _scaled(HIDDEN_UNITS, width, VARIANTS[variant].towers)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))
