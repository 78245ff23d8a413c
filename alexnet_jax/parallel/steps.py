"""The training and evaluation steps: what each device computes on its slice of the batch.

Each step is per-device code, as with `jax.pmap`: it sees its own slice of the
global batch and averages gradients with `lax.pmean` over the `batch` axis.
Read down: the train step (the paper's patches, the forward pass, the loss,
the averaged gradients, the update and the guard against non-finite values),
the eval step (centre or ten patches, the softmax averaged), the metrics they
share, and at the end how each is mapped over the (batch, model) mesh with
`jax.shard_map` (the mechanism `jax.pmap` itself is built on now) and
compiled once by `jax.jit`.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from alexnet_jax import models
from alexnet_jax.data import augment
from alexnet_jax.parallel import placement
from alexnet_jax.parallel.placement import BATCH_AXIS, MODEL_AXIS


@dataclasses.dataclass(frozen=True)
class OnDevice:
  """What the code of one device knows of its place on the mesh."""
  model: models.AlexNet           # the network as one device runs it
  model_axis_size: int
  examples_split_over_model: bool  # owt on a model axis: each device of `model` its own rows

  @classmethod
  def of(cls, model: models.AlexNet, mesh: Mesh) -> 'OnDevice':
    size = mesh.shape[MODEL_AXIS]
    return cls(placement.per_device_model(model, size), size,
               placement.examples_split_over_model(model.variant, size))

  def all_examples(self, *arrays):
    """`arrays` (labels, masks) for every example this device's logits cover: gathered over
    `model` where its devices hold different examples, as the logits are."""
    if self.examples_split_over_model:
      return tuple(lax.all_gather(x, MODEL_AXIS, tiled=True) for x in arrays)
    return arrays

  def global_rows(self, per_device: int):
    """The rows of the global batch this device holds (the same on the devices of a `model`
    group that share their examples)."""
    axes = (BATCH_AXIS, MODEL_AXIS) if self.examples_split_over_model else BATCH_AXIS
    return lax.axis_index(axes) * per_device + jnp.arange(per_device)


def step_seeds(seed: int) -> tuple[int, int]:
  """The seeds of dropout and of the augmentation, both derived from `config.seed`."""
  dropout_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(dropout_seed), int(augment_seed)


def train_step(state, batch, *, device: OnDevice, aug: augment.Augmentation, seed: int,
               param_specs):
  """One SGD step on this device's slice of the batch: (state, metrics).

  Augmentation keys derive from (seed, step, row of the global batch), dropout
  keys from (seed, step, device index): pure functions of the step, so a
  resumed run draws what it would have drawn.
  """
  dropout_seed, augment_seed = step_seeds(seed)
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(dropout_seed), state.step),
                           lax.axis_index((BATCH_AXIS, MODEL_AXIS)))
  rows = device.global_rows(batch['image'].shape[0])
  images = augment.train_images(aug, batch['image'],
                                augment.example_keys(augment_seed, state.step, rows))
  labels, = device.all_examples(batch['label'])

  def loss_fn(params):
    logits = device.model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    # The devices along `model` each compute the same loss from the gathered logits; each
    # differentiates its share, and the gathers' transposes (reduce-scatters) add the
    # shares back up.
    return loss / device.model_axis_size, (loss, logits)

  (_, (loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if device.model_axis_size > 1:
    # A parameter on every device of `model` (owt's convolutions) got a share of its
    # gradient on each of them.
    grads = jax.tree.map(lambda g, spec: g if MODEL_AXIS in spec else lax.psum(g, MODEL_AXIS),
                         grads, param_specs)
  # Every device holds the same number of examples: the mean of the
  # per-device mean gradients is the gradient of the global batch's mean loss.
  grads = lax.pmean(grads, BATCH_AXIS)
  metrics = lax.pmean({
      'loss': loss,
      'top1_error': 1.0 - top_k_correct(logits, labels, 1).mean(),
      'top5_error': 1.0 - top_k_correct(logits, labels, 5).mean(),
  }, BATCH_AXIS)
  metrics['grad_norm'] = global_norm(grads, param_specs)
  updated = state.apply_gradients(grads=grads)
  # A non-finite loss or gradient leaves the state as it was; the loop sees `finite` and
  # stops. An update that overflows from a finite gradient (a huge rate or decay) is caught
  # where it would be kept: `state_is_finite`, before every save.
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  metrics['finite'] = finite
  return new_state, metrics


def eval_step(params_list, batch, *, device: OnDevice, aug: augment.Augmentation,
              ten_patches: bool):
  """Counts of this device's examples, summed over the mesh (`count_correct`).

  `params_list` holds one model's parameters, or several for an ensemble. Each
  stored image gives its centre patch, or with `ten_patches` the paper's ten
  patches; the softmax is averaged over patches and models, as in the paper.
  Padding (mask 0) counts nowhere.
  """
  images = augment.eval_images(aug, batch['image'], ten_patches)
  labels, mask = device.all_examples(batch['label'], batch['mask'])
  crops = images.shape[1] if images.ndim == 5 else 1
  images = images.reshape(-1, *images.shape[-3:])
  log_probs = [jax.nn.log_softmax(device.model.apply({'params': p}, images, train=False))
               for p in params_list]
  # log of the mean softmax over models and patches, computed in log space.
  log_probs = jnp.stack(log_probs).reshape(len(params_list), -1, crops, log_probs[0].shape[-1])
  log_mean = jax.nn.logsumexp(log_probs, axis=(0, 2)) - jnp.log(len(params_list) * crops)
  # Devices along `model` hold the same logits: the counts are summed over `batch` only.
  return lax.psum(count_correct(log_mean, labels, mask), BATCH_AXIS)


def top_k_correct(logits, labels, k: int):
  top_k = lax.top_k(logits, min(k, logits.shape[-1]))[1]
  return jnp.any(top_k == labels[:, None], axis=-1)


def count_correct(logits, labels, mask) -> dict:
  """Sums of loss, top-1 and top-5 hits and examples, each example weighted by `mask`."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
      'loss_sum': jnp.sum(loss * mask),
      'top1_correct': jnp.sum(top_k_correct(logits, labels, 1) * mask),
      'top5_correct': jnp.sum(top_k_correct(logits, labels, 5) * mask),
      'count': jnp.sum(mask),
  }


@jax.jit
def _every_float_finite(tree):
  return jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
                    if jnp.issubdtype(x.dtype, jnp.inexact)]).all()


def state_is_finite(state) -> bool:
  """Whether every parameter and optimiser value of `state` (global arrays, on the whole
  mesh) is finite: one pass over the state, made before a save rather than in every step."""
  return bool(_every_float_finite((state.params, state.opt_state)))


def global_norm(grads, param_specs):
  """The norm of the whole gradient; a split parameter's squares are summed over `model`."""
  squares = [(jnp.sum(jnp.square(g.astype(jnp.float32))), MODEL_AXIS in spec)
             for g, spec in zip(jax.tree.leaves(grads), jax.tree.leaves(param_specs))]
  total = sum(sq for sq, split in squares if not split)
  if any(split for _, split in squares):
    total = total + lax.psum(sum(sq for sq, split in squares if split), MODEL_AXIS)
  return jnp.sqrt(total)


def make_train_step(model, aug: augment.Augmentation, seed: int, mesh: Mesh) -> Callable:
  """`train_step` over every device of `mesh`: (state, batch) -> (state, metrics), compiled
  once, the state's buffers donated.

  The batch holds the stored uint8 images; the step cuts the paper's patches
  from them (`augment.py`).
  """
  device = OnDevice.of(model, mesh)
  layers = placement.split_layers(model.variant, mesh.shape[MODEL_AXIS])

  def step(state, batch):
    state_specs = placement.specs(state, layers)
    # check_vma=False keeps pmap's semantics: the replicated parameters are not
    # tracked as invariant, so their gradients are per-device and the explicit
    # psum and pmean in `train_step` are the only reductions.
    mapped = jax.shard_map(
        functools.partial(train_step, device=device, aug=aug, seed=seed,
                          param_specs=state_specs.params),
        mesh=mesh, in_specs=(state_specs, placement.batch_spec(model, mesh)),
        out_specs=(state_specs, P()), check_vma=False)
    return mapped(state, batch)

  return jax.jit(step, donate_argnums=0)


def make_eval_step(model, aug: augment.Augmentation, mesh: Mesh,
                   ten_patches: bool = False) -> Callable:
  """`eval_step` over every device of `mesh`: (params_list, batch) -> summed counts over the
  global batch."""
  device = OnDevice.of(model, mesh)
  layers = placement.split_layers(model.variant, mesh.shape[MODEL_AXIS])

  def step(params_list, batch):
    mapped = jax.shard_map(
        functools.partial(eval_step, device=device, aug=aug, ten_patches=ten_patches),
        mesh=mesh, in_specs=(placement.specs(params_list, layers),
                             placement.batch_spec(model, mesh)),
        out_specs=P(), check_vma=False)
    return mapped(params_list, batch)

  return jax.jit(step)
