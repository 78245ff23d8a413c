"""One host's fault stops every host of a multi-host job, and every host's log says which and why.

A host that fails alone would leave the others waiting in a step it never joins. So:

- At every batch (`agreed`): each host reads its batch, then all hosts learn whether any of
  them could not, through the coordination service's key-value store and a barrier, before any
  host starts the step (a collective). A failure is then raised on every host as the same
  error, tagged with the failing host: the loop stops on every host as it stops on one, and
  saves the same step. A round costs a barrier and a read (0.6 ms between two processes on one
  machine), taken while the devices run the step before.
- Anywhere else (a save that one host's storage refuses, a bug): the failing host posts its
  line (`stop_job`); on every other host a thread (`watch`) prints it and ends the process,
  unless that host's own run ends first.

JAX's shutdown barrier waits for every host and aborts, stacks and all, when one never comes:
here every host comes within seconds, and leaves through it at once.
"""

import atexit
import dataclasses
import json
import logging
import os
import sys
import threading
from typing import NoReturn

import jax
# The coordination service's client, which `jax.distributed.initialize` made. No public API
# gives it (Orbax reads it here too).
from jax._src import distributed as jax_distributed

from alexnet_jax import errors

_KEYS = 'alexnet_jax/host_faults'
# A host alive but stuck: a dead one fails the barrier sooner, through JAX's heartbeat.
_BARRIER_MS = 24 * 3600 * 1000
# How long a host's own run may take to end by itself once another host posted its fault (a
# fault every host meets, such as a config error, is best told by each host itself).
_GRACE_S = 2.0
_WATCH_MS = 60_000
_ENDED = ''   # what a host's own stop key holds once its run has ended

_leaving = threading.Event()   # this process's loop is reporting its own end
_ending = threading.Lock()     # held by the one thread that says the last line and exits


def several_hosts() -> bool:
  """Whether this process is one of several joined by JAX's coordination service."""
  return jax.process_count() > 1 and jax_distributed.global_state.client is not None


def _client():
  return jax_distributed.global_state.client


def failing_host(error: BaseException) -> int | None:
  """The host whose fault `error` is, where every host agreed on it; None otherwise."""
  return getattr(error, '_failing_host', None)


def tagged_as(original: BaseException, error: BaseException) -> BaseException:
  """`error`, which reports `original`, tagged with `original`'s failing host."""
  if failing_host(original) is not None:
    error._failing_host = failing_host(original)  # pylint: disable=protected-access
  return error


def agreed(dataset):
  """`dataset` (a `data.Data`) whose train and eval batch iterators agree, batch by batch, on
  every host: one host's failure to read its batch is raised on every host. One host:
  `dataset` itself."""
  if not several_hosts():
    return dataset
  agreement = _Agreement()

  def through(batches):
    return lambda *args, **kwargs: _agreed_batches(batches(*args, **kwargs), agreement)

  return dataclasses.replace(dataset, train_batches=through(dataset.train_batches),
                             eval_batches=through(dataset.eval_batches))


def _agreed_batches(batches, agreement):
  """`batches`, each agreed on by every host before it is handed on."""
  try:
    while True:
      fault = None
      try:
        batch = next(batches)
      except StopIteration:   # every host reads as many batches
        return
      except Exception as e:  # pylint: disable=broad-except  (agreed on, then raised)
        fault = e
      agreement(fault)   # raises on every host if any host's batch failed
      yield batch
  finally:
    batches.close()


class _Agreement:
  """Rounds of agreement, one per batch, in the same order on every host."""

  def __init__(self):
    self._round = 0

  def __call__(self, fault: Exception | None) -> None:
    """Returns if no host had a fault this round; else raises, on every host, the fault of the
    lowest-numbered host that had one."""
    client, me = _client(), jax.process_index()
    faults = f'{_KEYS}/batch/{self._round}/'
    self._round += 1
    if fault is not None:   # posted before the barrier: every host reads it after
      client.key_value_set(faults + str(me), _encode(fault))
    client.wait_at_barrier(f'{_KEYS}/batch', _BARRIER_MS)
    posted = client.key_value_dir_get(faults)
    if not posted:
      return
    host, text = min((int(key.rsplit('/', 1)[1]), value) for key, value in posted)
    if fault is not None and host != me:
      logging.error('This host failed to read its batch too: %s', fault)
    error = fault if host == me else _decode(text)
    error._failing_host = host  # pylint: disable=protected-access
    raise error


def _encode(error: Exception) -> str:
  """`error` as JSON another host rebuilds it from: one of `errors` by its fields, any other as
  its name and message."""
  args = error.__reduce__()[1]
  if (getattr(errors, type(error).__name__, None) is type(error) and
      all(isinstance(a, (str, int, float)) for a in args)):
    return json.dumps({'error': type(error).__name__, 'args': list(args)})
  return json.dumps({'error': None, 'args': [f'{_text(error)} (its log has the traceback)']})


def _decode(text: str) -> errors.UserFacingError:
  fields = json.loads(text)
  kind = getattr(errors, fields['error'] or 'HostFaultError', None)
  if not (isinstance(kind, type) and issubclass(kind, errors.UserFacingError)):
    kind = errors.HostFaultError
  return kind(*fields['args'])


def _text(error: BaseException) -> str:
  if isinstance(error, errors.UserFacingError):
    return str(error)
  first_line = (str(error).strip().splitlines() or [''])[0]
  return f'{type(error).__name__}: {first_line}'


def watch() -> None:
  """On several hosts: starts the thread that ends this process when another host posts its
  fault; stopped at a normal exit, before JAX's shutdown (registered after it, run before)."""
  if not several_hosts():
    return
  thread = threading.Thread(target=_watch, name='host_faults', daemon=True)
  thread.start()
  atexit.register(_end_watch, thread)


def _watch() -> None:
  own = f'{_KEYS}/stop/{jax.process_index()}'
  while True:
    try:
      value = _client().blocking_key_value_get(own, _WATCH_MS)
      break
    except jax.errors.JaxRuntimeError as e:
      if 'DEADLINE_EXCEEDED' not in str(e):
        return   # the client is shutting down: this process is ending
  if value == _ENDED or _leaving.wait(_GRACE_S) or not _ending.acquire(blocking=False):
    return   # this host's run ended, or is ending, by itself
  _end(_posted() or value, 1)


def _end_watch(thread: threading.Thread) -> None:
  try:
    _client().key_value_set(f'{_KEYS}/stop/{jax.process_index()}', _ENDED)
  except jax.errors.JaxRuntimeError:
    return   # a fault was posted: the thread is answering it
  thread.join(timeout=5)


def _posted() -> str | None:
  """The line of the first fault a host posted; None if none did."""
  try:
    return _client().key_value_try_get(f'{_KEYS}/fault')
  except jax.errors.JaxRuntimeError:   # NOT_FOUND
    return None


def _post(line: str) -> None:
  """Tells every host's watch thread that this host stopped the job, and why (the first line
  posted is the one all print)."""
  client = _client()
  for key in [f'{_KEYS}/fault'] + [f'{_KEYS}/stop/{h}' for h in range(jax.process_count())]:
    try:
      client.key_value_set(key, line)
    except jax.errors.JaxRuntimeError:   # ALREADY_EXISTS: another host posted first
      pass


def stop_job(error: BaseException) -> NoReturn:
  """Ends this process of a multi-host job for `error`, with one line naming the failing host
  and its message: a fault of this host's own is posted for the others first."""
  _leaving.set()
  if not _ending.acquire(blocking=False):   # the watch thread is ending this process
    threading.Event().wait()
  me, count = jax.process_index(), jax.process_count()
  host = failing_host(error)
  if host is None and not isinstance(error, errors.UserFacingError):
    posted = _posted()
    if posted is not None:   # most likely how that host's leaving reached this one
      logging.warning('After another host stopped the job, this one failed: %s', _text(error))
      _end(posted, 1)
    if isinstance(error, jax.errors.JaxRuntimeError):   # a step or barrier with the others
      _end(f'a step this host takes with the others failed ({str(error).splitlines()[0]}). '
           'Most likely another host of the job stopped or cannot be reached: its log says '
           'why. Start the job again on every host to resume from the last checkpoint.', 1,
           lost=True)
  if not isinstance(error, errors.UserFacingError) and host in (None, me):
    logging.error('Host %d of %d failed:', me, count, exc_info=error)   # a bug: its traceback
  line = f'host {me if host is None else host} of {count} stopped the job: {_text(error)}'
  if host is None:   # this host's alone: the others learn it here
    _post(line)
  _end(line, 1)


def _end(line: str, code: int, lost: bool = False) -> NoReturn:
  """Prints `line` as this process's last and leaves (the caller holds `_ending`); `lost`: a
  host is gone, and none waits for the others."""
  logging.error('%s', line)
  print(f'error: {line}', file=sys.stderr, flush=True)
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  if lost:
    os._exit(code)
  _leave(code)


def _leave(code: int) -> NoReturn:
  """Exits through JAX's shutdown barrier, which every host reaches within seconds here (each
  has a line to say, from its loop or its watch thread), and then at once: not after the
  threads still waiting for other hosts, whose waits the shutdown cuts short. A host that left
  without it would take the coordination service, or its place in it, away from the others,
  and their clients would abort them."""
  # What those threads, and this loop cut short, would say of it: the last line is said.
  logging.disable(logging.CRITICAL)
  sys.stderr = open(os.devnull, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
  try:
    jax.distributed.shutdown()
  except jax.errors.JaxRuntimeError:
    pass   # the barrier failed: leave all the same
  os._exit(code)
