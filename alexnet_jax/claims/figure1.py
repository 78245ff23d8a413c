"""Figure 1 of the paper: the training error rate of a four-layer net with ReLUs against the
same net with tanh units, epoch by epoch, each at the learning rate that trains it fastest.

"The learning rates for each network were chosen independently to make training as fast as
possible": each net trains `sweep_epochs` from the same initial parameters at every rate of a
small sweep, and the rate with the lowest training error then goes on (the same run, not a new
one) to `epochs`. The training error of an epoch is that of its batches as they were trained
on, as cuda-convnet reported it. Everything is a function of the seed: the initial parameters,
each epoch's order (the same for both nets) and so every curve.
"""

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax.claims import four_layer_net

ACTIVATIONS = ('relu', 'tanh')


@dataclasses.dataclass(frozen=True)
class Settings:
  epochs: int = 30
  sweep_epochs: int = 2
  rates: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
  batch_size: int = 128
  momentum: float = 0.9
  seed: int = 0
  threshold: float = 0.25   # the figure's dashed line: 25% training error


@dataclasses.dataclass
class Result:
  sweep: dict[str, dict[float, list[float]]]   # activation -> rate -> training error by epoch
  chosen: dict[str, float]                     # activation -> the rate that went on
  curves: dict[str, list[float]]               # activation -> training error by epoch
  seconds: float = 0.0

  def epochs_to(self, threshold: float) -> dict[str, int | None]:
    """The first epoch (counted from 1) each net's training error reached `threshold`."""
    return {name: next((i + 1 for i, e in enumerate(curve) if e <= threshold), None)
            for name, curve in self.curves.items()}


class _Net:
  """One activation's net, its jitted step, and the data it trains on."""

  def __init__(self, activation: str, images: np.ndarray, labels: np.ndarray,
               num_classes: int, settings: Settings):
    self.model = four_layer_net.FourLayerNet(num_classes, activation)
    self.settings, self.images, self.labels = settings, images, labels
    pixels = images.reshape(-1, 3).astype(np.float64)
    # Inputs standardised by the training set's per-channel mean and std.
    self.mean, self.std = pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)
    self.tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0,
                                                  momentum=settings.momentum)
    self.step = jax.jit(self._step)

  def init(self, rate: float):
    params = self.model.init(jax.random.key(self.settings.seed),
                             jnp.zeros((1, *self.images.shape[1:]), jnp.float32))['params']
    opt_state = self.tx.init(params)
    opt_state.hyperparams['learning_rate'] = jnp.asarray(rate, jnp.float32)
    return params, opt_state

  def _step(self, params, opt_state, images, labels):
    x = (images.astype(jnp.float32) - self.mean) / self.std

    def loss_fn(p):
      logits = self.model.apply({'params': p}, x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, jnp.sum(jnp.argmax(logits, -1) != labels)

    (_, wrong), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, wrong

  def epoch(self, state, epoch: int):
    """(state after epoch `epoch`, its training error): the batches of its order, the last
    incomplete one left out; a state gone non-finite stays at error 1."""
    params, opt_state = state
    batch = self.settings.batch_size
    order = np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.labels))
    wrong = []
    for start in range(0, len(order) - batch + 1, batch):
      rows = np.sort(order[start:start + batch])
      params, opt_state, n = self.step(params, opt_state, self.images[rows], self.labels[rows])
      wrong.append(n)
    error = float(np.sum(jax.device_get(wrong))) / (len(wrong) * batch)
    finite = bool(jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])))
    return (params, opt_state), error if finite and math.isfinite(error) else 1.0


def run(images: np.ndarray, labels: np.ndarray, num_classes: int, settings: Settings,
        log: Callable[[str], None] = print) -> Result:
  """Figure 1's curves: uint8 [N, H, W, 3] training images, their labels."""
  if len(labels) < settings.batch_size:
    raise ValueError(f'{len(labels)} training images do not make one batch of '
                     f'{settings.batch_size}.')
  started = time.monotonic()
  result = Result(sweep={}, chosen={}, curves={})
  for activation in ACTIVATIONS:
    net = _Net(activation, images, labels, num_classes, settings)
    runs = {}
    for rate in settings.rates:
      state, errors = net.init(rate), []
      for epoch in range(settings.sweep_epochs):
        state, error = net.epoch(state, epoch)
        errors.append(error)
      runs[rate] = (state, errors)
      log(f'{activation} at rate {rate:g}: training error {_percent(errors)} in the sweep '
          f'({time.monotonic() - started:.0f} s)')
    # The lowest error at the sweep's end; on a tie, the smaller rate.
    rate = min(settings.rates, key=lambda r: (runs[r][1][-1], r))
    state, curve = runs[rate]
    for epoch in range(settings.sweep_epochs, settings.epochs):
      state, error = net.epoch(state, epoch)
      curve.append(error)
      log(f'{activation} at rate {rate:g}, epoch {epoch + 1}: training error {error:.1%} '
          f'({time.monotonic() - started:.0f} s)')
    result.sweep[activation] = {r: runs[r][1][:settings.sweep_epochs] for r in settings.rates}
    result.chosen[activation], result.curves[activation] = rate, curve
  result.seconds = time.monotonic() - started
  return result


def summary(result: Result, threshold: float) -> str:
  """The figure's claim as measured: the epochs each net took to reach `threshold`, and
  tanh's over ReLU's."""
  reached = result.epochs_to(threshold)
  parts = [f'{name} reached {threshold:.0%} training error at epoch {epoch}' if epoch else
           f'{name} did not reach {threshold:.0%} training error in {len(result.curves[name])} '
           'epochs' for name, epoch in reached.items()]
  if reached['relu'] and reached['tanh']:
    parts.append(f'tanh took {reached["tanh"] / reached["relu"]:.1f} times as many epochs as '
                 'ReLU (the paper: six times)')
  return '; '.join(parts) + '.'


def _percent(errors: list[float]) -> str:
  return ', '.join(f'{e:.1%}' for e in errors)
