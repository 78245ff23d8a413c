"""What the training loop does by the clock or over chosen steps: saves every so many minutes,
and a trace of some steps for TensorBoard's profiler."""

import logging
import time

import jax
import numpy as np
from jax.experimental import multihost_utils


class SaveClock:
  """Whether `minutes` have passed since the last save; every host takes process 0's answer,
  since a save is a step all hosts take together."""

  def __init__(self, minutes: float):
    self._seconds, self._last = minutes * 60, time.monotonic()

  def saved(self) -> None:
    self._last = time.monotonic()

  def due(self) -> bool:
    if self._seconds <= 0:
      return False
    due = time.monotonic() - self._last >= self._seconds
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
    return due


class ProfileTrace:
  """A trace of `steps` steps from `first` on for TensorBoard's profiler (process 0 only)."""

  def __init__(self, workdir: str, first: int, steps: int):
    self._workdir, self._first, self._last = workdir, first, first + steps
    self._enabled, self._running = steps > 0 and jax.process_index() == 0, False

  def __call__(self, step: int) -> None:
    if not self._enabled:
      return
    if step == self._first:
      jax.profiler.start_trace(self._workdir)
      self._running = True
    elif step == self._last:
      self.stop()

  def stop(self) -> None:
    if self._running:
      jax.profiler.stop_trace()
      self._running = False
      logging.info('Profile of steps %d-%d written to %s.', self._first, self._last - 1,
                   self._workdir)
