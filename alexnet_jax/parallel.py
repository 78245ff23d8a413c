"""The devices, the per-device train and eval steps, batches on devices.

Each step is written as per-device code, as with `jax.pmap`: it sees its own
slice of the global batch and averages gradients with `lax.pmean` over the
`batch` axis. `jax.shard_map` maps it over a (batch, model) mesh of every
device of every host (the mechanism `jax.pmap` itself is built on now), and
`jax.jit` compiles it once with the state buffers donated. The `model` axis
has one device unless the config splits the network over several
(`model_parallel.py`); then each device also holds only its slice of the
split layers.
"""

import functools
import logging
import os
from typing import Callable

import jax
from jax import lax
from jax._src import cloud_tpu_init   # JAX's own verdict on whether this is a Cloud TPU VM
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import model_parallel
from alexnet_jax.data import augment
from alexnet_jax.errors import ConfigError
from alexnet_jax.model_parallel import BATCH_AXIS, MODEL_AXIS

# Environment variables that mean this process is one of several that
# `jax.distributed.initialize()` can join without arguments.
_CLUSTER_HINTS = ('JAX_COORDINATOR_ADDRESS', 'SLURM_STEP_NUM_TASKS', 'OMPI_COMM_WORLD_SIZE',
                  'TPU_WORKER_HOSTNAMES')
# What jax.distributed.initialize() says when it finds no cluster to join.
_NO_COORDINATOR = 'coordinator_address should be defined'


def _in_cluster() -> bool:
  """Whether JAX can find peers to join: a Cloud TPU VM (whose slice may span hosts, found
  through its metadata server), or a job scheduler's environment."""
  if cloud_tpu_init.running_in_cloud_tpu_vm:
    return True
  for name in _CLUSTER_HINTS:
    value = os.environ.get(name, '')
    if name == 'TPU_WORKER_HOSTNAMES':
      if ',' in value:
        return True
    elif value and value != '1':
      return True
  return False


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 100) -> None:
  """Joins the other hosts of a multi-host job; a no-op on a single host.

  With an explicit coordinator address the job is joined as told; otherwise
  JAX finds its peers from the environment (Cloud TPU VMs and GKE, SLURM, Open
  MPI), as JAX's docs do it on Cloud TPU: a TPU VM that is a slice of its own
  finds no coordinator, and trains as one host. A host silent for
  `heartbeat_timeout_seconds` makes the others stop with an error instead of
  waiting for it forever.

  Several processes without JAX's distributed client (a TPU pod's runtime
  finds its hosts without it) are refused: without the client there is no
  preemption sync point, and a preemption would kill every host unsaved.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  elif _in_cluster():
    try:
      jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    except ValueError as e:
      if _NO_COORDINATOR not in str(e):
        raise
      logging.info('No multi-host job found to join (%s): training as one host.', e)
  if jax.process_count() > 1 and not jax.distributed.is_initialized():
    raise ConfigError(
        f'This is process {jax.process_index()} of {jax.process_count()}, but JAX\'s '
        'distributed client did not start, and without it a preemption would stop every '
        'host with nothing saved. Start each process with --coordinator_address=HOST:PORT '
        '--num_processes=N --process_id=I (HOST: process 0\'s), or set '
        'JAX_COORDINATOR_ADDRESS.')


def one_host_only(command: str) -> None:
  """Refuses to run `command`, which reads a workdir on one host, as one of several processes."""
  if jax.process_count() > 1:
    raise ConfigError(
        f'{command} runs on one host, and this is process {jax.process_index()} of '
        f'{jax.process_count()}. Run it on a single host that can read the workdir (a '
        'single-host VM, or this one with JAX_PLATFORMS=cpu), once.')


def make_mesh(devices=None, model_axis_size: int = 1) -> Mesh:
  """A (batch, model) mesh over `devices`, by default every device of every host.

  Consecutive devices (those of one host first) share a `model` group, so the
  layer-by-layer exchanges of a split model stay between neighbours.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if model_axis_size < 1 or devices.size % model_axis_size:
    raise ValueError(f'{devices.size} devices do not split into groups of {model_axis_size}.')
  return Mesh(devices.reshape(-1, model_axis_size), (BATCH_AXIS, MODEL_AXIS))


def _split_layers(model, mesh: Mesh) -> frozenset[str]:
  return model_parallel.split_layers(model.variant, mesh.shape[MODEL_AXIS])


def init_train_state(model, tx, image_size: int, seed: int, mesh: Mesh) -> train_state.TrainState:
  """The initial parameters and optimiser state, created directly where the mesh keeps them."""

  def init():
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = model.init(jax.random.key(seed), images, train=False)['params']
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  specs = model_parallel.specs(jax.eval_shape(init), _split_layers(model, mesh))
  return jax.jit(init, out_shardings=jax.tree.map(lambda s: NamedSharding(mesh, s), specs))()


def shard_batch(batch: dict, mesh: Mesh, spec: P = P(BATCH_AXIS)) -> dict:
  """Turns this host's part of the global batch into global arrays split as `spec` says."""
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def batch_spec(model, mesh: Mesh) -> P:
  """How `model`'s steps take a global batch on `mesh` (`model_parallel.batch_spec`)."""
  return model_parallel.batch_spec(model.variant, mesh.shape[MODEL_AXIS])


def _top_k_correct(logits, labels, k: int):
  top_k = lax.top_k(logits, min(k, logits.shape[-1]))[1]
  return jnp.any(top_k == labels[:, None], axis=-1)


def _global_rows(model, model_axis_size: int, per_device: int):
  """The rows of the global batch this device holds (the same on the devices of a `model`
  group that share their examples)."""
  axes = (BATCH_AXIS, MODEL_AXIS) if model_parallel.examples_split_over_model(
      model.variant, model_axis_size) else BATCH_AXIS
  return lax.axis_index(axes) * per_device + jnp.arange(per_device)


def step_seeds(seed: int) -> tuple[int, int]:
  """The seeds of dropout and of the augmentation, both derived from `config.seed`."""
  dropout_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(dropout_seed), int(augment_seed)


def make_train_step(model, aug: augment.Augmentation, seed: int, mesh: Mesh) -> Callable:
  """(state, batch) -> (state, metrics), compiled once, the state's buffers donated.

  The batch holds the stored uint8 images; the step cuts the paper's patches
  from them (`augment.py`). Augmentation keys derive from (seed, step, row of
  the global batch), dropout keys from (seed, step, device index): pure
  functions of the step, so a resumed run draws what it would have drawn.
  """
  model_axis_size = mesh.shape[MODEL_AXIS]
  device_model = model_parallel.per_device_model(model, model_axis_size)
  layers = _split_layers(model, mesh)
  dropout_seed, augment_seed = step_seeds(seed)

  def per_device(state, batch, param_specs):
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(dropout_seed), state.step),
                             lax.axis_index((BATCH_AXIS, MODEL_AXIS)))
    rows = _global_rows(model, model_axis_size, batch['image'].shape[0])
    images = augment.train_images(aug, batch['image'],
                                  augment.example_keys(augment_seed, state.step, rows))
    labels = batch['label']
    if model_parallel.examples_split_over_model(model.variant, model_axis_size):
      labels = lax.all_gather(labels, MODEL_AXIS, tiled=True)  # as the logits are gathered

    def loss_fn(params):
      logits = device_model.apply({'params': params}, images, train=True,
                                  rngs={'dropout': rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      # The devices along `model` each compute the same loss from the gathered logits; each
      # differentiates its share, and the gathers' transposes (reduce-scatters) add the
      # shares back up.
      return loss / model_axis_size, (loss, logits)

    (_, (loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if model_axis_size > 1:
      # A parameter on every device of `model` (owt's convolutions) got a share of its
      # gradient on each of them.
      grads = jax.tree.map(lambda g, spec: g if MODEL_AXIS in spec else lax.psum(g, MODEL_AXIS),
                           grads, param_specs)
    # Every device holds the same number of examples: the mean of the
    # per-device mean gradients is the gradient of the global batch's mean loss.
    grads = lax.pmean(grads, BATCH_AXIS)
    metrics = lax.pmean({
        'loss': loss,
        'top1_error': 1.0 - _top_k_correct(logits, labels, 1).mean(),
        'top5_error': 1.0 - _top_k_correct(logits, labels, 5).mean(),
    }, BATCH_AXIS)
    metrics['grad_norm'] = _global_norm(grads, param_specs)
    # A non-finite loss or gradient leaves the state as it was; the loop sees
    # `finite` and stops, so a diverged state is never saved.
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             state.apply_gradients(grads=grads), state)
    metrics['finite'] = finite
    return new_state, metrics

  def step(state, batch):
    state_specs = model_parallel.specs(state, layers)
    # check_vma=False keeps pmap's semantics: the replicated parameters are not
    # tracked as invariant, so their gradients are per-device and the explicit
    # psum and pmean above are the only reductions.
    mapped = jax.shard_map(functools.partial(per_device, param_specs=state_specs.params),
                           mesh=mesh, in_specs=(state_specs, batch_spec(model, mesh)),
                           out_specs=(state_specs, P()), check_vma=False)
    return mapped(state, batch)

  return jax.jit(step, donate_argnums=0)


def _global_norm(grads, param_specs):
  """The norm of the whole gradient; a split parameter's squares are summed over `model`."""
  squares = [(jnp.sum(jnp.square(g.astype(jnp.float32))), MODEL_AXIS in spec)
             for g, spec in zip(jax.tree.leaves(grads), jax.tree.leaves(param_specs))]
  total = sum(sq for sq, split in squares if not split)
  if any(split for _, split in squares):
    total = total + lax.psum(sum(sq for sq, split in squares if split), MODEL_AXIS)
  return jnp.sqrt(total)


def make_eval_step(model, aug: augment.Augmentation, mesh: Mesh,
                   ten_patches: bool = False) -> Callable:
  """(params_list, batch) -> summed counts over the global batch.

  `params_list` holds one model's parameters, or several for an ensemble. Each
  stored image gives its centre patch, or with `ten_patches` the paper's ten
  patches; the softmax is averaged over patches and models, as in the paper.
  Padding (mask 0) counts nowhere.
  """
  model_axis_size = mesh.shape[MODEL_AXIS]
  device_model = model_parallel.per_device_model(model, model_axis_size)
  layers = _split_layers(model, mesh)

  def per_device(params_list, batch):
    images = augment.eval_images(aug, batch['image'], ten_patches)
    labels, mask = batch['label'], batch['mask']
    if model_parallel.examples_split_over_model(model.variant, model_axis_size):
      labels, mask = (lax.all_gather(x, MODEL_AXIS, tiled=True) for x in (labels, mask))
    crops = images.shape[1] if images.ndim == 5 else 1
    images = images.reshape(-1, *images.shape[-3:])
    log_probs = [jax.nn.log_softmax(device_model.apply({'params': p}, images, train=False))
                 for p in params_list]
    # log of the mean softmax over models and patches, computed in log space.
    log_probs = jnp.stack(log_probs).reshape(len(params_list), -1, crops, log_probs[0].shape[-1])
    log_mean = jax.nn.logsumexp(log_probs, axis=(0, 2)) - jnp.log(len(params_list) * crops)
    # Devices along `model` hold the same logits: the counts are summed over `batch` only.
    return lax.psum(count_correct(log_mean, labels, mask), BATCH_AXIS)

  def step(params_list, batch):
    mapped = jax.shard_map(per_device, mesh=mesh,
                           in_specs=(model_parallel.specs(params_list, layers),
                                     batch_spec(model, mesh)),
                           out_specs=P(), check_vma=False)
    return mapped(params_list, batch)

  return jax.jit(step)


def count_correct(logits, labels, mask) -> dict:
  """Sums of loss, top-1 and top-5 hits and examples, each example weighted by `mask`."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
      'loss_sum': jnp.sum(loss * mask),
      'top1_correct': jnp.sum(_top_k_correct(logits, labels, 1) * mask),
      'top5_correct': jnp.sum(_top_k_correct(logits, labels, 5) * mask),
      'count': jnp.sum(mask),
  }
