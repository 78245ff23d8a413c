"""The training log's progress line: steps/s, the share done, the time left, and what the
training thread itself spends on each step.

The training thread should only dispatch steps: the loader decodes and copies batches to the
devices on other threads and processes. Its CPU time per step (a thread clock, so the other
threads' work is not counted) says how close the host is to being the limit: a step of 6 ms
on a GPU leaves the thread at most 6 ms.
"""

import logging
import time


class Progress:
  """Logs, when called at a step, the progress since the previous call; evaluations (passed
  to `exclude`) do not count."""

  def __init__(self, first_step: int, last_step: int, global_batch: int):
    self._last, self._batch = last_step, global_batch
    self._step, self._wall, self._cpu = first_step, time.monotonic(), time.thread_time()

  def exclude(self, wall_seconds: float, cpu_seconds: float) -> None:
    self._wall += wall_seconds
    self._cpu += cpu_seconds

  def report(self, step: int) -> dict:
    """{'steps_per_sec', 'images_per_sec', 'host_ms_per_step'} since the last report; logged
    with the share done and the time left."""
    wall, cpu = time.monotonic(), time.thread_time()
    steps = step - self._step
    if steps <= 0:
      return {}
    seconds = max(wall - self._wall, 1e-9)
    rates = {'steps_per_sec': steps / seconds, 'images_per_sec': steps * self._batch / seconds,
             'host_ms_per_step': 1000 * (cpu - self._cpu) / steps}
    left = (self._last - step) / rates['steps_per_sec']
    logging.info('Step %d of %d (%.1f%%), %.2f steps/s, %.0f images/s, %s left; the training '
                 'thread spent %.2f ms of CPU per step.', step, self._last,
                 100 * step / self._last, rates['steps_per_sec'], rates['images_per_sec'],
                 _duration(left), rates['host_ms_per_step'])
    self._step, self._wall, self._cpu = step, wall, cpu
    return rates


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours} h {minutes:02d} min'
  if minutes:
    return f'{minutes} min {seconds:02d} s'
  return f'{seconds} s'
