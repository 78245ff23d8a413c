"""Saving and restoring the train state and the loop's own state with Orbax.

A checkpoint holds the parameters, the optimiser state and the step (arrays),
and `loop_state`, a JSON dict (the plateau controller's state). Orbax writes
each one to a temporary folder and renames it when complete, so an
interrupted save never looks like a checkpoint. A checkpoint that cannot be
read is renamed `<step>.unreadable`, with a warning, and the next older one
is restored instead.
"""

import logging
import os

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from alexnet_jax.errors import ConfigError


class Checkpoints:

  def __init__(self, directory, keep: int = 1, read_only: bool = False):
    """`keep` newest checkpoints are kept; `read_only` opens another run's, changing nothing."""
    self.directory, self._read_only = directory, read_only
    self._manager = ocp.CheckpointManager(
        directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'loop_state': ocp.JsonCheckpointHandler()},
        # Synchronous: orbax 0.12.8's background save races with its own
        # temporary-folder creation on a busy host and loses the checkpoint.
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                             read_only=read_only,
                                             enable_async_checkpointing=False))
    self._last_saved = self._manager.latest_step()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state, loop_state: dict) -> None:
    """Writes the checkpoint of `state.step`, unless it is the one written last."""
    step = int(jax.device_get(state.step))
    if step == self._last_saved:
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_arrays(state)),
        loop_state=ocp.args.JsonSave(loop_state)), force=True)
    self._last_saved = step

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, state, step: int | None = None):
    """(state, loop_state) from the newest readable checkpoint (or from `step`), placed as
    `state` is.

    None if there is none. Raises ConfigError if the checkpoints hold another
    model's parameters.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
    steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
    for step in steps:
      try:
        saved = self._manager.item_metadata(step)['state']
        _check_same_shapes(saved, target, self.path(step))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), loop_state=ocp.args.JsonRestore()))
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      logging.info('Restored the checkpoint of step %d from %s.', step, self.directory)
      self._last_saved = step
      return state.replace(**restored['state']), restored['loop_state']
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    path = self.path(step)
    if self._read_only:
      raise ConfigError(f'Checkpoint {path} cannot be read ({type(error).__name__}: '
                        f'{str(error).splitlines()[0] if str(error) else ""}).') from error
    logging.warning('Checkpoint %s cannot be read (%s: %s); it is renamed %s.unreadable and '
                    'an older checkpoint is restored instead.', path, type(error).__name__,
                    str(error).splitlines()[0] if str(error) else '', path)
    if jax.process_index() == 0:
      os.replace(path, path + '.unreadable')
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def restore_params(workdir: str, which: str, state):
  """(params, step) of checkpoint `which` ('latest', 'best' or a step) of a trained workdir,
  placed as `state` is; the workdir is only read."""
  if which not in ('latest', 'best') and not which.isdigit():
    raise ConfigError(f"--checkpoint={which}: use 'latest', 'best' or a step number.")
  step = int(which) if which.isdigit() else None
  directory = os.path.join(os.path.abspath(workdir), 'best' if which == 'best' else 'checkpoints')
  checkpoints = Checkpoints(directory, read_only=True) if os.path.isdir(directory) else None
  steps = checkpoints.all_steps() if checkpoints else []
  if not steps or (step is not None and step not in steps):
    raise ConfigError(
        f'{directory} holds no checkpoint{"" if step is None else f" of step {step}"} '
        f'(it holds {steps or "none"}): check the workdir and --checkpoint.')
  restored, _ = checkpoints.restore(state, step)
  checkpoints.close()
  return restored.params, int(jax.device_get(restored.step))


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
