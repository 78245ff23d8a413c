"""The training metrics between logs: kept on the devices, then checked and written.

A step's metrics stay on the devices until the next log or save, so the loop
never waits for a step to finish; the check that every step was finite comes
before anything is saved.
"""

import collections
import queue

import jax
import numpy as np

from alexnet_jax import errors
from alexnet_jax.loop import progress_line


class MetricsLog:
  """Training metrics kept on the devices between logs, then checked, averaged and written
  with the progress since the last log."""

  def __init__(self, writer, steps_per_epoch: int, progress: progress_line.Progress):
    self._writer, self._steps_per_epoch, self._progress = writer, steps_per_epoch, progress
    self._pending = []   # (step, metrics on the devices), not yet checked
    self._checked = []   # (step, metrics on the host), checked, not yet written
    # Damaged records skipped, by step: told by the loader's thread, ahead of the steps.
    self._skips, self._skips_told = collections.Counter(), queue.SimpleQueue()

  def skipped(self, batch_number: int, count: int) -> None:
    self._skips_told.put((batch_number + 1, count))   # batch b is step b + 1's

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def exclude(self, wall_seconds: float, cpu_seconds: float) -> None:
    """Leaves time spent outside training (evaluation) out of the rates."""
    self._progress.exclude(wall_seconds, cpu_seconds)

  def check(self, checkpoints) -> None:
    """Raises DivergenceError at the first step since the last check that was not finite,
    naming the newest of `checkpoints`: called before anything is saved."""
    if not self._pending:
      return
    steps = [s for s, _ in self._pending]
    host = jax.device_get([m for _, m in self._pending])
    self._pending = []
    for step, m in zip(steps, host):
      if not m['finite']:
        raise diverged(step, f'the loss or a gradient is not finite (loss {float(m["loss"])}, '
                       f'gradient norm {float(m["grad_norm"])})', checkpoints)
    self._checked += zip(steps, host)

  def write(self, learning_rate: float) -> None:
    """Writes the means of the checked steps since the last write, and the progress."""
    if not self._checked:
      return
    steps = [s for s, _ in self._checked]
    host = [m for _, m in self._checked]
    self._checked = []
    step = steps[-1]
    summary = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != 'finite'}
    while not self._skips_told.empty():
      told_step, count = self._skips_told.get()
      self._skips[told_step] += count
    summary['skipped_records'] = sum(self._skips.pop(s, 0) for s in steps)
    summary.update(self._progress.report(step))
    summary['learning_rate'] = learning_rate
    summary['epoch'] = step / self._steps_per_epoch
    self._writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})


def diverged(step: int, what: str, checkpoints) -> errors.DivergenceError:
  """The run's end at `step`, where `what` was not finite. No such state is ever saved (the
  step keeps the state before a non-finite loss or gradient, and the loop checks the state
  before each save), so the newest checkpoint is finite."""
  latest = checkpoints.latest_step()
  return errors.DivergenceError(
      f'Training diverged at step {step}: {what}. Nothing after it was saved; the last good '
      f'checkpoint is '
      f'{checkpoints.path(latest) if latest is not None else "none (no checkpoint yet)"}. '
      'Lower --config.learning_rate (or --config.weight_decay), or train in float32, and run '
      'again.')
