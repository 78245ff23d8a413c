"""Saving and restoring the train state and the loop's own state with Orbax.

A checkpoint holds the parameters, the optimiser state and the step (arrays),
and `loop_state`, a JSON dict (the plateau controller's state). Orbax writes
each one to a temporary folder and renames it when complete, so an
interrupted save never looks like a checkpoint.

A checkpoint found damaged (files missing, truncated or failing their
checksums) is renamed `<step>.unreadable`, with a warning, and the next older
one is restored instead; every host must agree it is damaged before it is
renamed. Any other failure to restore (a storage error that may pass, memory,
a checkpoint of another optimiser after an upgrade) stops the run with the
step and the cause, and renames nothing. A read-only restore never renames.
"""

import contextlib
import errno
import json
import logging
import shutil
import sys
import time
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from jax.experimental import multihost_utils

from alexnet_jax.errors import CheckpointError, ConfigError, StorageError

# How tensorstore reports data that is not there or not whole (absl status codes), and
# how Orbax reports a missing item.
_DAMAGE_CODES = ('NOT_FOUND:', 'DATA_LOSS:', 'OUT_OF_RANGE:')
_MISSING_ITEM = 'was not found in the checkpoint'
OK, DAMAGED, FAILED = 0, 1, 2
# A write the storage refuses, as the OS says it and as tensorstore (Orbax's arrays) does.
_REFUSALS = {errno.ENOSPC: 'no space is left on the device', errno.EDQUOT: 'the disk quota is '
             'used up', errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission '
             'is denied', errno.EPERM: 'the operation is not permitted'}
_REFUSAL_TEXTS = {'No space left on device': errno.ENOSPC, 'Disk quota exceeded': errno.EDQUOT,
                  'Read-only file system': errno.EROFS, 'Permission denied': errno.EACCES,
                  'PERMISSION_DENIED': errno.EACCES}
# A storage that does not answer, as the OS, aiohttp (gcsfs), tensorstore and TensorFlow's
# GCS file system (libcurl's words) say it.
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                       errno.EHOSTUNREACH, errno.ENETUNREACH}
_UNREACHABLE_TEXTS = ('Cannot connect to host', 'Could not connect to server',
                      "Couldn't connect to server", 'Could not resolve host', 'UNAVAILABLE:')


def quiet_orbax_logs() -> None:
  """For commands whose output is their answer: Orbax logs every stage of every read at INFO
  and its read-only notes as warnings; keep only its errors, and others' warnings."""
  def keep(record) -> bool:
    return record.levelno >= (logging.ERROR if '/orbax/' in record.pathname else logging.WARNING)
  absl_logging.get_absl_handler().addFilter(keep)


def refused_write(error: BaseException) -> str | None:
  """What the storage said when it refused a write (full, read-only, ...), or None."""
  for cause in _causes(error):
    if isinstance(cause, OSError) and cause.errno in _REFUSALS:
      return _REFUSALS[cause.errno]
    for text, code in _REFUSAL_TEXTS.items():
      if text in str(cause):
        return _REFUSALS[code]
  return None


def unreachable(error: BaseException) -> bool:
  """Whether `error` says the storage (an object store's server) could not be reached, after
  the retries of the library that wrote (gcsfs, tensorstore)."""
  for cause in _causes(error):
    if isinstance(cause, ConnectionError) or (
        isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS):
      return True
    if any(text in str(cause) for text in _UNREACHABLE_TEXTS):
      return True
  return False


UNREACHABLE = 'the storage could not be reached'


def storage_failure(error: BaseException) -> tuple[str, str] | None:
  """(what happened, what to do) when a write failed for the storage's sake; None when it
  failed for another reason, which is not the storage's to explain."""
  refusal = refused_write(error)
  if refusal is not None:
    return refusal, ('Free space there, lower --config.keep_checkpoints, or pass another '
                     '--workdir (copy the workdir there to keep its checkpoints).')
  if unreachable(error):
    return UNREACHABLE, 'Check the network, the bucket and its permissions from this host.'
  return None


def storage_error(error: BaseException, subject: str, detail: str = '') -> StorageError | None:
  """The StorageError that says `subject` (e.g. 'The checkpoint of step 4 could not be
  written to DIR') failed for the storage's sake, and what to do; None when `error` is not
  the storage's. `detail` goes between the cause and the fix."""
  failure = storage_failure(error)
  if failure is None:
    return None
  what, fix = failure
  return StorageError(f'{subject}: {what} ({describe(error)}).{detail} {fix}')


# Where runs of earlier versions kept their best checkpoint, a copy of it.
_LEGACY_BEST = 'best'


class _StorageFailureLogs(logging.Filter):
  """Drops what Orbax's threads, and asyncio for the writes of theirs it finds unfinished at
  exit, log of a storage failure, traceback and all: the run stops with one message that
  says it (Checkpoints._reported). Anything else passes."""

  def filter(self, record) -> bool:
    if record.exc_info and ('/orbax/' in record.pathname or record.name == 'asyncio'):
      return storage_failure(record.exc_info[1]) is None
    return True


def _quiet_storage_failures() -> None:
  """Once: Orbax's logs of a storage failure dropped, and so is the 'Event loop is closed'
  of each of tensorstore's writes that ends after the save it belonged to has failed and
  Orbax has closed that save's event loop (Python reports them as unraisable, from
  `call_soon_threadsafe`: a late answer nobody waits for)."""
  absl_logger = logging.getLogger('absl')
  if any(isinstance(f, _StorageFailureLogs) for f in absl_logger.filters):
    return
  for name in ('absl', 'asyncio'):
    logging.getLogger(name).addFilter(_StorageFailureLogs())
  report = sys.unraisablehook

  def unraisable(unraisable_error):
    error, trace = unraisable_error.exc_value, unraisable_error.exc_traceback
    late = (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed' and
            trace is not None and any(frame.name == 'call_soon_threadsafe'
                                      for frame in traceback.extract_tb(trace)))
    if not late:
      report(unraisable_error)

  sys.unraisablehook = unraisable


def _causes(error: BaseException) -> list[BaseException]:
  """`error` and the errors it was raised from or during, innermost last."""
  chain = []
  while error is not None and error not in chain and len(chain) < 16:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def checkpoint_bytes(state) -> int:
  """The bytes one checkpoint of `state` holds: its parameters and optimiser state."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(_arrays(state)))


def free_bytes(directory) -> int | None:
  """Free bytes where `directory` is, on a local disk; None where that cannot be known."""
  if '://' in str(directory):
    return None
  path = epath.Path(directory)
  while not path.exists() and path != path.parent:
    path = path.parent
  return shutil.disk_usage(str(path)).free


def is_damage(error: BaseException) -> bool:
  """Whether `error` says the checkpoint's files are missing, truncated or corrupt."""
  if isinstance(error, (FileNotFoundError, json.JSONDecodeError)):
    return True
  message = str(error)
  if isinstance(error, ValueError):
    return any(code in message for code in _DAMAGE_CODES)
  return isinstance(error, KeyError) and _MISSING_ITEM in message


class _KeepStep:
  """Orbax preservation policy: keep the checkpoint of the step `step()` names (the best)."""

  def __init__(self, step):
    self._step = step

  def should_preserve(self, checkpoints, *, context):
    del context
    return [info.step == self._step() for info in checkpoints]


class Checkpoints:
  """A workdir's checkpoints: the newest `keep`, and the one whose step the loop names best.

  Saves are asynchronous: `save` returns once the arrays are copied off the devices, and
  Orbax writes them on its own threads, each to a temporary folder renamed when complete,
  so a run killed meanwhile resumes from the checkpoint before. A save that fails is
  reported, with its step, by the next `save` or by `wait`.
  """

  def __init__(self, directory, keep: int = 1, read_only: bool = False,
               best_step=lambda: None):
    """`read_only` opens another run's, changing nothing; `best_step()`: the step whose
    checkpoint is kept beside the newest `keep` (None: none)."""
    self.directory, self._read_only = directory, read_only
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [ocp.checkpoint_managers.LatestN(n=keep), _KeepStep(best_step)])
    self._manager = ocp.CheckpointManager(
        directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'loop_state': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only,
            preservation_policy=None if read_only else policy,
            enable_async_checkpointing=not read_only))
    self._last_saved = self._manager.latest_step()
    self._writing = None   # (step, bytes) of the save in flight
    _quiet_storage_failures()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return str(epath.Path(self.directory) / str(step))

  def save(self, state, loop_state: dict) -> None:
    """Starts writing the checkpoint of `state.step`, unless it is the one saved last.

    Raises StorageError if the storage refuses this write or refused the one
    before; what a refused write leaves is removed where it can be (it never
    counts as a checkpoint anyway).
    """
    step = int(jax.device_get(state.step))
    if step == self._last_saved:
      return
    self.wait()
    start = time.monotonic()
    self._writing = (step, checkpoint_bytes(state))
    with self._reported():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_arrays(state)),
          loop_state=ocp.args.JsonSave(loop_state)), force=True)
    self._last_saved = step
    logging.info('Checkpoint %s: the step waited %.2f s for it; it is written in the '
                 'background.', self.path(step), time.monotonic() - start)

  def wait(self) -> None:
    """Waits for the save in flight; StorageError if the storage refused it."""
    if self._writing is not None:
      with self._reported():
        self._manager.wait_until_finished()
      self._writing = None

  @contextlib.contextmanager
  def _reported(self):
    """A failure of the save in flight as a StorageError that names its step."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (sorted out just below)
      step, size = self._writing
      self._writing = None
      subject = f'The checkpoint of step {step} could not be written to {self.directory}'
      detail = ''
      if refused_write(e):   # the storage answers: tidy up, and say what one checkpoint needs
        self._remove_partial(step)
        free = free_bytes(self.directory)
        detail = (f' One checkpoint needs about {_gib(size)}'
                  f'{f", {_gib(free)} are free there" if free is not None else ""}.')
      error = storage_error(e, subject, detail)
      if error is None:
        raise
      try:
        self._manager.reload()   # the failed step is no checkpoint
      except Exception as gone:  # pylint: disable=broad-except  (the storage went away too)
        if storage_error(gone, subject, '') is None:
          raise
      raise error from e

  def _remove_partial(self, step: int) -> None:
    """Removes what a failed save of `step` left, best effort (Orbax skips it in any case)."""
    for partial in epath.Path(self.directory).glob(f'{step}.orbax-checkpoint-tmp*'):
      try:
        partial.rmtree()
      except OSError:
        pass

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, state, step: int | None = None):
    """(state, loop_state) from the newest readable checkpoint (or from `step`), placed as
    `state` is.

    None if there is none. Raises ConfigError if the checkpoints hold another
    model's parameters, CheckpointError if one cannot be read for a reason other
    than damage.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
    steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
    for step in steps:
      error, restored = None, None
      try:
        saved = self._manager.item_metadata(step)['state']
        _check_same_shapes(saved, target, self.path(step))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), loop_state=ocp.args.JsonRestore()))
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (sorted out just below)
        error = e
      verdict = OK if error is None else DAMAGED if is_damage(error) else FAILED
      verdicts = np.asarray(multihost_utils.process_allgather(np.int32(verdict))).reshape(-1)
      if (verdicts == FAILED).any():
        hosts = ', '.join(str(i) for i in np.flatnonzero(verdicts == FAILED))
        cause = describe(error) if verdict == FAILED else "the cause is in that host's log"
        raise CheckpointError(
            f'Checkpoint {self.path(step)} could not be restored (host {hosts}: {cause}). It '
            'was left as it is. If the cause has passed (storage, memory), run again; if the '
            'code or its libraries changed since it was saved, run the versions that wrote '
            'it, or start a new --workdir.') from error
      if (verdicts == DAMAGED).any():
        self._set_aside(step, error)
        continue
      logging.info('Restored the checkpoint of step %d from %s.', step, self.directory)
      self._last_saved = step
      return state.replace(**restored['state']), restored['loop_state']
    return None

  def loop_state(self, step: int) -> dict:
    """The loop's own state saved with checkpoint `step` (learning-rate schedule, best
    step)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        loop_state=ocp.args.JsonRestore()))['loop_state']

  def read_as_saved(self, step: int | None = None) -> dict:
    """The arrays of checkpoint `step` (default: the newest) with the shapes and dtypes they
    were saved with, whatever model this run builds: {'step', 'params', 'opt_state'}."""
    step = self._manager.latest_step() if step is None else step
    saved = self._manager.item_metadata(step)['state']
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), saved)
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']

  def _set_aside(self, step: int, error: Exception | None) -> None:
    """Renames the damaged checkpoint of `step`, once every host has found it so."""
    path = self.path(step)
    cause = describe(error) if error is not None else "damaged, as another host found"
    if self._read_only:
      raise ConfigError(f'Checkpoint {path} is damaged ({cause}).') from error
    logging.warning('Checkpoint %s is damaged (%s); it is renamed %s.unreadable and an older '
                    'checkpoint is restored instead.', path, cause, path)
    if jax.process_index() == 0:
      epath.Path(path).rename(path + '.unreadable')
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self._manager.reload()

  def close(self) -> None:
    """Waits for the save in flight (a failure is logged: the run is ending for another
    reason, which stays the one reported) and closes."""
    try:
      self.wait()
    except StorageError as e:
      logging.error('%s', e)
    self._manager.close()


def restore_params(workdir: str, which: str, state):
  """(params, step) of checkpoint `which` ('latest', 'best' or a step) of a trained workdir,
  placed as `state` is; the workdir is only read."""
  checkpoints, step = _open_chosen(workdir, which)
  try:
    restored, _ = checkpoints.restore(state, step)
  finally:
    checkpoints.close()
  return restored.params, int(jax.device_get(restored.step))


def restore_saved_params(workdir: str, which: str) -> tuple[dict, int]:
  """(params, step) of checkpoint `which` of a workdir as numpy arrays of the shapes they
  were saved with: another run's parameters, read without building its model."""
  checkpoints, step = _open_chosen(workdir, which)
  path = checkpoints.path(step if step is not None else checkpoints.all_steps()[-1])
  try:
    saved = checkpoints.read_as_saved(step)
  except Exception as e:  # pylint: disable=broad-except  (one message for every cause)
    damage = ' (damaged: files missing, truncated or corrupt)' if is_damage(e) else ''
    raise CheckpointError(f'Checkpoint {path} could not be read{damage}: {describe(e)}.') from e
  finally:
    checkpoints.close()
  return jax.tree.map(np.asarray, saved['params']), int(saved['step'])


def best_step(workdir: str) -> int | None:
  """The step of the lowest validation error a workdir's newest checkpoint records and keeps;
  None where it records none (a run that has not evaluated, or keeps no best checkpoint)."""
  directory = workdir_path(workdir) / 'checkpoints'
  if not directory.is_dir():
    return None
  checkpoints = Checkpoints(str(directory), read_only=True)
  try:
    steps = checkpoints.all_steps()
    if not steps:
      return None
    best = checkpoints.loop_state(steps[-1]).get('best_step')
    return best if best in steps else None
  finally:
    checkpoints.close()


def _open_chosen(workdir: str, which: str):
  """(read-only Checkpoints, step) of checkpoint `which` of a workdir; step None: the newest."""
  if which not in ('latest', 'best') and not which.isdigit():
    raise ConfigError(f"--checkpoint={which}: use 'latest', 'best' or a step number.")
  root = workdir_path(workdir)
  step = int(which) if which.isdigit() else None
  directory = root / 'checkpoints'
  if which == 'best':
    step = best_step(workdir)
    if step is None and (root / _LEGACY_BEST).is_dir():   # a run of an earlier version
      directory = root / _LEGACY_BEST
    elif step is None:
      raise ConfigError(f'{workdir} keeps no best checkpoint (no evaluation yet, or trained '
                        'with --config.keep_best_checkpoint=false): use --checkpoint=latest.')
  checkpoints = Checkpoints(str(directory), read_only=True) if directory.is_dir() else None
  steps = checkpoints.all_steps() if checkpoints else []
  if not steps or (step is not None and step not in steps):
    raise ConfigError(
        f'{directory} holds no checkpoint{"" if step is None else f" of step {step}"} '
        f'(it holds {steps or "none"}): check the workdir and --checkpoint.')
  return checkpoints, step


def write_whole(path: epath.Path, contents: bytes) -> None:
  """Writes `path` whole or not at all: to a temporary name, renamed when complete; a write
  the storage refuses raises StorageError."""
  temporary = path.parent / (path.name + '.tmp')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(contents)
    temporary.replace(path)   # over a copy of an earlier run, where there is one
  except OSError as e:
    error = storage_error(e, f'{path} could not be written')
    if error is None:
      raise
    raise error from e


def _gib(size: int) -> str:
  return f'{size / 2**30:.2f} GiB'


def workdir_path(workdir: str) -> epath.Path:
  """The workdir as a path Orbax takes: absolute on local disks, as it is on gs:// and the
  like."""
  path = epath.Path(workdir)
  return path if '://' in workdir else epath.Path(path.expanduser().absolute())


def describe(error: BaseException) -> str:
  """'ValueError: its first line'."""
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
  return f'{type(error).__name__}: {first_line}'


def _arrays(state) -> dict:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state}


def _check_same_shapes(saved, target, path: str) -> None:
  saved_params, target_params = saved['params'], target['params']
  saved_shapes = {jax.tree_util.keystr(k): tuple(v.shape)
                  for k, v in jax.tree_util.tree_leaves_with_path(saved_params)}
  target_shapes = {jax.tree_util.keystr(k): tuple(v.shape)
                   for k, v in jax.tree_util.tree_leaves_with_path(target_params)}
  if saved_shapes == target_shapes:
    return
  differences = [f'{k}: saved {saved_shapes.get(k)}, configured {target_shapes.get(k)}'
                 for k in sorted(set(saved_shapes) | set(target_shapes))
                 if saved_shapes.get(k) != target_shapes.get(k)]
  raise ConfigError(
      f'The checkpoint {path} holds a different model than the config describes '
      f'({"; ".join(differences[:3])}{" ..." if len(differences) > 3 else ""}). '
      'Use a new --workdir, or the config (model, width, dataset) the workdir was trained with.')
