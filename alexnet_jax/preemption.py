"""Stopping cleanly on SIGTERM (preemption) and Ctrl-C: save the current step, exit 0."""

import logging
import signal

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Tells the loop when to save and stop.

  On one host, SIGTERM or a first Ctrl-C sets a flag (a second Ctrl-C stops at
  once). On several hosts a signal reaches one host only, so JAX's own SIGTERM
  notifier and `reached_preemption_sync_point` decide: every host stops after
  the same step.
  """

  def __init__(self):
    self._requested = False
    self._previous = {}
    self._multihost = jax.process_count() > 1
    if not self._multihost:
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    if self._requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('Received %s: saving a checkpoint after this step and stopping.',
                    signal.Signals(signum).name)
    self._requested = True

  def should_stop(self, step: int) -> bool:
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
