"""Saving and restoring the train state and the loop's own state with Orbax.

A checkpoint holds the parameters, the optimiser state and the step (arrays),
and `loop_state`, a JSON dict (the plateau controller's state). Orbax writes
each one to a temporary folder and renames it when complete, so an
interrupted save never looks like a checkpoint.

A checkpoint found damaged (files missing, truncated or failing their
checksums, or values that are not finite) is renamed `<step>.unreadable`,
with a warning, and the next older one is restored instead; every host must
agree it is damaged before it is renamed. Any other failure to restore (a
storage error that may pass, memory, a checkpoint of another optimiser after
an upgrade) stops the run with the step and the cause, and renames nothing. A read-only restore never renames.
"""

import contextlib
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from alexnet_jax.errors import CheckpointError, ConfigError, StorageError
from alexnet_jax.workdir import failed_writes, orbax_logs, storage

# How tensorstore reports data that is not there or not whole (absl status codes), and
# how Orbax reports a missing item.
_DAMAGE_CODES = ('NOT_FOUND:', 'DATA_LOSS:', 'OUT_OF_RANGE:')
_MISSING_ITEM = 'was not found in the checkpoint'
OK, DAMAGED, FAILED = 0, 1, 2


def folder(workdir: str):
  """Where a workdir keeps its checkpoints (an epath.Path)."""
  return storage.workdir_path(workdir) / 'checkpoints'


# Where runs of earlier versions kept a copy of their best checkpoint; read, never written.
LEGACY_BEST_FOLDER = 'best'


def checkpoint_bytes(state) -> int:
  """The bytes one checkpoint of `state` holds: its parameters and optimiser state."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(_arrays(state)))


def check_space(directory, state, checkpoints_needed: int) -> None:
  """Warns at start-up when `directory` has room for fewer than `checkpoints_needed`."""
  size, free = checkpoint_bytes(state), storage.free_bytes(directory)
  if free is not None and free < checkpoints_needed * size:
    logging.warning(
        'The workdir %s has %.2f GiB free; %d checkpoints of %.2f GiB (keep_checkpoints + 2: '
        'the newest ones, the best and one being written) need %.2f GiB. Free space, or lower '
        '--config.keep_checkpoints, before a save fails.', directory, free / 2**30,
        checkpoints_needed, size / 2**30, checkpoints_needed * size / 2**30)


class NotFiniteError(ValueError):
  """A checkpoint whose parameters or optimiser state are not all finite: written before the
  step checked its updates, it is as useless as a damaged one."""


def _check_finite(arrays) -> None:
  """Raises NotFiniteError unless every float of `arrays` is finite (one reduction on the
  devices that hold them)."""
  floats = [x for x in jax.tree.leaves(arrays) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not bool(jax.jit(lambda xs: jnp.stack([jnp.isfinite(x).all() for x in xs]).all())(floats)):
    raise NotFiniteError('its parameters or optimiser state are not all finite')


def is_damage(error: BaseException) -> bool:
  """Whether `error` says the checkpoint's files are missing, truncated or corrupt, or its
  values are not finite."""
  if isinstance(error, (FileNotFoundError, json.JSONDecodeError, NotFiniteError)):
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
    # On several hosts, one host's failed write is waited for in vain: it is watched for.
    self._failed_write = (failed_writes.Signal() if jax.process_count() > 1 and not read_only
                          else None)
    self._manager = ocp.CheckpointManager(
        directory,
        handler_registry=failed_writes.handler_registry(self._failed_write),
        options=ocp.CheckpointManagerOptions(
            # The folder is made by the first save: a run refused at start-up leaves none.
            create=False, read_only=read_only,
            preservation_policy=None if read_only else policy,
            enable_async_checkpointing=not read_only))
    self._last_saved = self._manager.latest_step()
    self._writing = None   # (step, bytes) of the save in flight
    orbax_logs.drop_storage_failures()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return str(epath.Path(self.directory) / str(step))

  def save(self, state, loop_state: dict) -> float | None:
    """Starts writing the checkpoint of `state.step`, unless it is the one saved last; the
    seconds the step waited for it (None: nothing to save).

    Raises StorageError if the storage refuses this write or refused the one
    before; what a refused write leaves is removed where it can be (it never
    counts as a checkpoint anyway).
    """
    step = int(jax.device_get(state.step))
    if step == self._last_saved:
      return None
    self.wait()
    start = time.monotonic()
    self._writing = (step, checkpoint_bytes(state))
    with self._reported():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_arrays(state)),
          loop_state=ocp.args.JsonSave(loop_state)), force=True)
    self._last_saved = step
    waited = time.monotonic() - start
    logging.info('Checkpoint %s: the step waited %.2f s for it; it is written in the '
                 'background.', self.path(step), waited)
    return waited

  def wait(self) -> None:
    """Waits for the save in flight; StorageError if the storage refused it."""
    if self._writing is not None:
      with self._reported():
        if self._failed_write is not None:
          self._failed_write.wait_while(self._manager.is_saving_in_progress)
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
      if storage.refused_write(e):   # the storage answers: tidy up, say what a checkpoint needs
        self._remove_partial(step)
        free = storage.free_bytes(self.directory)
        detail = (f' One checkpoint needs about {storage.gib(size)}'
                  f'{f", {storage.gib(free)} are free there" if free is not None else ""}.')
      error = storage.storage_error(e, subject, detail)
      if error is None:
        raise
      try:
        self._manager.reload()   # the failed step is no checkpoint
      except Exception as gone:  # pylint: disable=broad-except  (the storage went away too)
        if storage.storage_error(gone, subject, '') is None:
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
        _check_finite(restored['state'])
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (sorted out just below)
        error = e
      verdict = OK if error is None else DAMAGED if is_damage(error) else FAILED
      verdicts = np.asarray(multihost_utils.process_allgather(np.int32(verdict))).reshape(-1)
      if (verdicts == FAILED).any():
        hosts = ', '.join(str(i) for i in np.flatnonzero(verdicts == FAILED))
        cause = (storage.describe(error) if verdict == FAILED else
                 "the cause is in that host's log")
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
    cause = storage.describe(error) if error is not None else "damaged, as another host found"
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
    if self._failed_write is None or not self._failed_write.failed:
      self._manager.close()   # else its threads wait for the other hosts in vain


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
