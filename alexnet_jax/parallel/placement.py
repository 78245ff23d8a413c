"""Placement on the (batch, model) device mesh: the mesh, and where AlexNet's parameters and
examples live on it.

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
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import models

BATCH_AXIS = 'batch'
MODEL_AXIS = 'model'


def make_mesh(devices=None, model_axis_size: int = 1) -> Mesh:
  """A (batch, model) mesh over `devices`, by default every device of every host.

  Consecutive devices (those of one host first) share a `model` group, so the
  layer-by-layer exchanges of a split model stay between neighbours.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if model_axis_size < 1 or devices.size % model_axis_size:
    raise ValueError(f'{devices.size} devices do not split into groups of {model_axis_size}.')
  return Mesh(devices.reshape(-1, model_axis_size), (BATCH_AXIS, MODEL_AXIS))


def split_layers(variant: str, model_axis_size: int) -> frozenset[str]:
  """The layers whose parameters are split over `model`."""
  if model_axis_size == 1:
    return frozenset()
  if models.VARIANTS[variant].towers > 1:
    return frozenset(models.LAYERS)
  return frozenset(('fc6', 'fc7', 'fc8'))


def examples_split_over_model(variant: str, model_axis_size: int) -> bool:
  """Whether devices along `model` take different examples (owt) or the same ones (paper)."""
  return model_axis_size > 1 and models.VARIANTS[variant].towers == 1


def batch_spec(model: models.AlexNet, mesh: Mesh) -> P:
  """How the examples of a global batch are split over the mesh for `model`'s steps."""
  if examples_split_over_model(model.variant, mesh.shape[MODEL_AXIS]):
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


def init_train_state(model, tx, image_size: int, seed: int, mesh: Mesh) -> train_state.TrainState:
  """The initial parameters and optimiser state, created directly where the mesh keeps them."""

  def init():
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = model.init(jax.random.key(seed), images, train=False)['params']
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  layers = split_layers(model.variant, mesh.shape[MODEL_AXIS])
  state_specs = specs(jax.eval_shape(init), layers)
  return jax.jit(init, out_shardings=jax.tree.map(lambda s: NamedSharding(mesh, s),
                                                  state_specs))()


def shard_batch(batch: dict, mesh: Mesh, spec: P = P(BATCH_AXIS)) -> dict:
  """Turns this host's part of the global batch into global arrays split as `spec` says."""
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
