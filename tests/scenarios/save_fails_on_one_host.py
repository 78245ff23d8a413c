"""main.py, with one host's storage refusing its part of one checkpoint as a full disk does: the
tests of several hosts run it in place of main.py.

SAVE_FAILS=HOST:STEP:WHEN: process HOST's save of step STEP fails, as the save starts
(WHEN=start) or while Orbax writes it in the background (WHEN=background), which the run
learns at its next save or wait.
"""

import os
import pathlib
import runpy
import sys

import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _full() -> ValueError:   # as tensorstore reports a full disk
  return ValueError('RESOURCE_EXHAUSTED: Error writing local file "...": '
                    '[OS error 28: No space left on device]')


class _Failed:
  """An Orbax commit future whose write the disk refused."""

  def result(self, timeout=None):
    raise _full()

  def cancel(self):
    pass


def _fail_at_start(step: int) -> None:
  save = ocp.CheckpointManager.save

  def failing(manager, at, *args, **kwargs):
    if at == step:
      raise _full()
    return save(manager, at, *args, **kwargs)

  ocp.CheckpointManager.save = failing


def _fail_in_background(step: int) -> None:
  async_save = ocp.StandardCheckpointHandler.async_save

  async def failing(handler, directory, *args, **kwargs):
    futures = await async_save(handler, directory, *args, **kwargs)
    folder = pathlib.Path(str(getattr(directory, 'path', directory))).parent.name
    if folder.split('.')[0] == str(step):   # STEP.orbax-checkpoint-tmp-...
      futures = [*(futures or []), _Failed()]
    return futures

  ocp.StandardCheckpointHandler.async_save = failing


if __name__ == '__main__':
  host, step, when = os.environ['SAVE_FAILS'].split(':')
  if f'--process_id={host}' in sys.argv:
    {'start': _fail_at_start, 'background': _fail_in_background}[when](int(step))
  sys.argv[0], sys.path[0] = str(ROOT / 'main.py'), str(ROOT)   # as `python main.py` has them
  runpy.run_path(str(ROOT / 'main.py'), run_name='__main__')
