"""The checkpoints of a trained workdir, as the commands that read one choose them: the
newest ('latest'), the one of the lowest validation error ('best'), or a step. A workdir is
only read, never changed."""

import jax
import numpy as np

from alexnet_jax.errors import CheckpointError, ConfigError
from alexnet_jax.workdir import checkpointing, storage

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
    damage = ' (damaged: files missing, truncated or corrupt)' if checkpointing.is_damage(e) else ''
    raise CheckpointError(
        f'Checkpoint {path} could not be read{damage}: {storage.describe(e)}.') from e
  finally:
    checkpoints.close()
  return jax.tree.map(np.asarray, saved['params']), int(saved['step'])


def best_step(workdir: str) -> int | None:
  """The step of the lowest validation error a workdir's newest checkpoint records and keeps;
  None where it records none (a run that has not evaluated, or keeps no best checkpoint)."""
  directory = checkpointing.folder(workdir)
  if not directory.is_dir():
    return None
  checkpoints = checkpointing.Checkpoints(str(directory), read_only=True)
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
  root = storage.workdir_path(workdir)
  step = int(which) if which.isdigit() else None
  directory = checkpointing.folder(workdir)
  if which == 'best':
    step = best_step(workdir)
    if step is None and (root / checkpointing.LEGACY_BEST_FOLDER).is_dir():   # a run of an earlier version
      directory = root / checkpointing.LEGACY_BEST_FOLDER
    elif step is None:
      raise ConfigError(f'{workdir} keeps no best checkpoint (no evaluation yet, or trained '
                        'with --config.keep_best_checkpoint=false): use --checkpoint=latest.')
  checkpoints = checkpointing.Checkpoints(str(directory), read_only=True) if directory.is_dir() else None
  steps = checkpoints.all_steps() if checkpoints else []
  if not steps or (step is not None and step not in steps):
    raise ConfigError(
        f'{directory} holds no checkpoint{"" if step is None else f" of step {step}"} '
        f'(it holds {steps or "none"}): check the workdir and --checkpoint.')
  return checkpoints, step
