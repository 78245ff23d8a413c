"""The paper's SGD update and its learning-rate schedules.

Section 5 of the paper:
    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v
The learning rate multiplies the gradient before it enters the momentum
buffer, so dividing it by 10 does not rescale the velocity already built up
(unlike `optax.sgd`, which applies the rate after the momentum).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


# How the learning rate changes: 'plateau', the paper's division by 10 when the validation
# error stops improving (PlateauController); 'cosine', a half cosine from the configured rate
# down to 0 over the run, a function of the step alone.
SCHEDULES = ('plateau', 'cosine')


def schedule(name: str, learning_rate: float,
             num_steps: int) -> Callable[[int], jax.Array] | None:
  """The rate of each step (counted from 0) under schedule `name`; None for 'plateau', whose
  rate changes only when the validation error says so."""
  if name == 'plateau':
    return None
  if name == 'cosine':
    return optax.cosine_decay_schedule(learning_rate, num_steps)
  raise ValueError(f'Unknown learning-rate schedule {name!r}: use one of {SCHEDULES}.')


def paper_sgd(learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4,
              rate_schedule: Callable[[int], jax.Array] | None = None
              ) -> optax.GradientTransformation:
  """The paper's update; the learning rate lives in the state so it can change without a recompile.

  With `rate_schedule`, each update first sets the rate to rate_schedule(the state's count
  of updates): a restored state continues the schedule where it stopped. The state has the
  same structure either way, so checkpoints restore into a state made without it.
  """

  def make(learning_rate):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),     # grad + wd * w
        optax.scale_by_learning_rate(learning_rate),  # -lr * (grad + wd * w)
        optax.trace(decay=momentum),                  # v = momentum * v + that
    )

  tx = optax.inject_hyperparams(make)(learning_rate=learning_rate)
  if rate_schedule is None:
    return tx

  def update(updates, state, params=None):
    old = state.hyperparams['learning_rate']
    rate = jnp.asarray(rate_schedule(state.count), old.dtype)
    state = state._replace(hyperparams={**state.hyperparams, 'learning_rate': rate})
    return tx.update(updates, state, params)

  return optax.GradientTransformation(tx.init, update)


def get_learning_rate(opt_state) -> float:
  return float(np.asarray(jax.device_get(opt_state.hyperparams['learning_rate'])))


def set_learning_rate(opt_state, learning_rate: float):
  """A copy of `opt_state` with a new learning rate, placed where the old one was."""
  old = opt_state.hyperparams['learning_rate']
  new = jax.device_put(np.asarray(learning_rate, old.dtype), old.sharding)
  return opt_state._replace(hyperparams={**opt_state.hyperparams, 'learning_rate': new})


@dataclasses.dataclass
class PlateauController:
  """Divides the learning rate by `factor` when validation error stops improving.

  After each evaluation, call `update(error)`: the error improves when it is
  lower than the best so far by more than `min_delta`. After `patience`
  evaluations without improvement the rate drops, at most `max_drops` times.
  `state_dict` holds what changes as it runs; saved with a checkpoint and
  loaded into a controller made from the same config, it continues the same
  schedule after a restart.
  """
  learning_rate: float
  patience: int = 4
  min_delta: float = 0.0
  factor: float = 0.1
  max_drops: int = 3
  best_error: float = float('inf')
  evals_without_improvement: int = 0
  drops: int = 0

  def update(self, error: float) -> bool:
    """Records one evaluation's error; returns True when the learning rate was dropped."""
    if error < self.best_error - self.min_delta:
      self.best_error = error
      self.evals_without_improvement = 0
      return False
    self.evals_without_improvement += 1
    if self.evals_without_improvement >= self.patience and self.drops < self.max_drops:
      self.learning_rate *= self.factor
      self.drops += 1
      self.evals_without_improvement = 0
      return True
    return False

  _STATE = ('learning_rate', 'best_error', 'evals_without_improvement', 'drops')

  def state_dict(self) -> dict:
    return {k: getattr(self, k) for k in self._STATE}

  def load_state_dict(self, state: dict) -> None:
    for k in self._STATE:
      setattr(self, k, type(getattr(self, k))(state[k]))
