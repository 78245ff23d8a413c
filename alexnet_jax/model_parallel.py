"""Where AlexNet's parameters and examples live on a (batch, model) device mesh.

Examples are split over the `batch` axis: data parallelism, gradients
averaged with `lax.pmean`. A `model` axis of more than one device also
splits the network itself (`models.AlexNet` with `model_axis` set):

- paper: the paper's two GPUs (section 3.2). Every layer's kernels and
  biases are split on their output axis, one tower per device; the two
  devices along `model` see the same examples.
- owt: "one weird trick" (Krizhevsky 2014). The convolutions are data
  parallel over both axes, each device on its own examples, their
  parameters on every device; fc6, fc7 and fc8 are split on their output
  axis over `model`.

A split parameter's optimiser state (its momentum) is split the same way.
"""

import jax
from jax.sharding import PartitionSpec as P

from alexnet_jax import models

BATCH_AXIS = 'batch'
MODEL_AXIS = 'model'
_ALL_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


def split_layers(variant: str, model_axis_size: int) -> frozenset[str]:
  """The layers whose parameters are split over `model`."""
  if model_axis_size == 1:
    return frozenset()
  if models.VARIANTS[variant].towers > 1:
    return frozenset(_ALL_LAYERS)
  return frozenset(('fc6', 'fc7', 'fc8'))


def examples_split_over_model(variant: str, model_axis_size: int) -> bool:
  """Whether devices along `model` take different examples (owt) or the same ones (paper)."""
  return model_axis_size > 1 and models.VARIANTS[variant].towers == 1


def batch_spec(variant: str, model_axis_size: int) -> P:
  """How the examples of a global batch are split over the mesh."""
  if examples_split_over_model(variant, model_axis_size):
    return P((BATCH_AXIS, MODEL_AXIS))
  return P(BATCH_AXIS)


def specs(tree, layers: frozenset[str]):
  """A PartitionSpec for each array of `tree` (parameters, or a train state holding them).

  An array under a key named after a layer in `layers` is split on its last
  (output) axis over `model`; every other array is on every device.
  """

  def spec(path, leaf):
    in_split_layer = any(isinstance(k, jax.tree_util.DictKey) and k.key in layers for k in path)
    if in_split_layer and leaf.ndim:
      return P(*([None] * (leaf.ndim - 1)), MODEL_AXIS)
    return P()

  return jax.tree_util.tree_map_with_path(spec, tree)


def per_device_model(model: models.AlexNet, model_axis_size: int) -> models.AlexNet:
  """The network as one device of the mesh runs it inside `jax.shard_map`."""
  if model_axis_size == 1:
    return model
  return model.clone(model_axis=MODEL_AXIS, model_axis_size=model_axis_size)
