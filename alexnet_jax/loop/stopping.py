"""Stopping cleanly on SIGTERM (preemption) and Ctrl-C: save the current step, exit 0."""

import contextlib
import logging
import signal

import jax
from jax.experimental import multihost_utils


class StopWhileWaiting(Exception):
  """A stop was asked for while the loop waited for its next batch."""


class PreemptionWatch:
  """Tells the loop when to save and stop: asked after every train step and every
  evaluation batch.

  On one host, SIGTERM or a first Ctrl-C sets a flag; one that lands while the
  loop waits for a batch (`waiting`) ends the wait at once, so a slow input does
  not delay the save. A second Ctrl-C stops at once (KeyboardInterrupt). On
  several hosts a signal reaches one host only, so JAX's own SIGTERM notifier
  and `reached_preemption_sync_point` decide: every host stops at the same point.
  That point is counted in calls, not in steps: every host asks after the same
  train steps and the same evaluation batches, so the count rises in step on all
  of them, as JAX's sync point requires.
  """

  def __init__(self):
    self._requested = self._waiting = False
    self._calls = 0
    self._previous = {}
    self._multihost = jax.process_count() > 1
    if not self._multihost:
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    if self._requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('Received %s: saving a checkpoint %s and stopping.',
                    signal.Signals(signum).name,
                    'now' if self._waiting else 'after this step')
    self._requested = True
    if self._waiting:
      raise StopWhileWaiting

  @contextlib.contextmanager
  def waiting(self):
    """Around a wait for input: a stop asked for meanwhile raises StopWhileWaiting."""
    if self._requested and not self._multihost:
      raise StopWhileWaiting
    self._waiting = True
    try:
      yield
    finally:
      self._waiting = False

  def should_stop(self) -> bool:
    self._calls += 1
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(self._calls)
    return self._requested

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
