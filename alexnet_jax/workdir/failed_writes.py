"""Orbax's item handlers, telling at once when this host's part of a checkpoint fails to be
written in the background.

On several hosts, Orbax's threads finish a checkpoint only once every host's part is written:
a host whose part failed never comes, and the other hosts' threads, then this host's own
(whose finishing waits for theirs), wait for it until Orbax's timeouts, and any wait for the
save with them. These handlers set a `Signal` the moment the write fails, which the wait for
the save (`checkpointing.Checkpoints.wait`) watches instead of waiting for Orbax's threads.
"""

import threading

import orbax.checkpoint as ocp

# How often a wait for a save on several hosts looks again whether it ended or failed.
_POLL_S = 0.05


class Signal:
  """Set, with the error, when a background write of this host failed."""

  def __init__(self):
    self._failed = threading.Event()
    self.error: Exception | None = None

  def set(self, error: Exception) -> None:
    if not self._failed.is_set():
      self.error = error
      self._failed.set()

  @property
  def failed(self) -> bool:
    return self._failed.is_set()

  def wait_while(self, busy) -> None:
    """Returns once `busy()` is False; raises the failure as soon as there is one."""
    while busy():
      if self._failed.wait(_POLL_S):
        break
    if self.failed:
      raise self.error


class _Told:
  """An Orbax commit future that sets `signal` before it raises."""

  def __init__(self, future, signal: Signal):
    self._future, self._signal = future, signal

  def result(self, timeout=None):
    try:
      return self._future.result(timeout=timeout)
    except Exception as e:
      self._signal.set(e)
      raise

  def cancel(self):
    return self._future.cancel()


class _Telling:
  """Mixin for an Orbax handler: the commit futures of its saves tell `signal` of a failure."""
  signal: Signal

  async def async_save(self, *args, **kwargs):
    futures = await super().async_save(*args, **kwargs)
    return None if futures is None else [_Told(f, self.signal) for f in futures]


class _TellingStandard(_Telling, ocp.StandardCheckpointHandler):
  pass


class _TellingJson(_Telling, ocp.JsonCheckpointHandler):
  pass


def handler_registry(signal: Signal | None):
  """Orbax's handlers of a checkpoint's two items (the arrays, the loop's JSON), for the args
  that save and restore them; with `signal`, telling it of a failed background write."""
  if signal is None:
    state, loop_state = ocp.StandardCheckpointHandler(), ocp.JsonCheckpointHandler()
  else:
    state, loop_state = _TellingStandard(), _TellingJson()
    state.signal = loop_state.signal = signal
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, handler, args in (('state', state, (ocp.args.StandardSave, ocp.args.StandardRestore)),
                              ('loop_state', loop_state, (ocp.args.JsonSave,
                                                          ocp.args.JsonRestore))):
    for kind in args:
      registry.add(item, kind, handler)
  return registry
