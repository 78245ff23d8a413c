"""Saving and restoring the train state and the loop's own state with Orbax.

A checkpoint holds the parameters, the optimiser state and the step (arrays),
and `loop_state`, a JSON dict (the plateau controller's state). Orbax writes
each one to a temporary folder and renames it when complete, so an
interrupted save never looks like a checkpoint.
"""

import logging

import jax
import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, directory, keep: int):
    self._manager = ocp.CheckpointManager(
        directory, item_names=('state', 'loop_state'),
        # Synchronous: orbax 0.12.8's background save races with its own
        # temporary-folder creation on a busy host and loses the checkpoint.
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))
    self._last_saved = self._manager.latest_step()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state, loop_state: dict) -> None:
    """Writes the checkpoint of `state.step`, unless it is the one written last."""
    step = int(jax.device_get(state.step))
    if step == self._last_saved:
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_arrays(state)),
        loop_state=ocp.args.JsonSave(loop_state)), force=True)
    self._last_saved = step

  def restore_latest(self, state):
    """(state, loop_state) from the newest checkpoint, placed as `state` is; None if there is none."""
    step = self._manager.latest_step()
    if step is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), loop_state=ocp.args.JsonRestore()))
    logging.info('Restored the checkpoint of step %d from %s.', step, self._manager.directory)
    arrays = restored['state']
    return state.replace(**arrays), restored['loop_state']

  def wait(self) -> None:
    """Blocks until every save started has been written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _arrays(state) -> dict:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state}
