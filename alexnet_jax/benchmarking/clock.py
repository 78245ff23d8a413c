"""Wall time, the cores a measurement used, and the calling thread's CPU time."""

import os
import resource
import time

from alexnet_jax.benchmarking import processes


class Clock:
  """Wall time and CPU time of this process and its live child processes, and of the
  calling thread alone. After `stop` (or the `with` block): `wall` seconds, `cores` used
  (CPU seconds over wall seconds) and `thread` CPU seconds."""

  def __enter__(self):
    self._wall, self._cpu, self._thread = time.perf_counter(), cpu_seconds(), time.thread_time()
    return self

  def stop(self):
    self.wall = time.perf_counter() - self._wall
    self.cores = (cpu_seconds() - self._cpu) / self.wall
    self.thread = time.thread_time() - self._thread

  def __exit__(self, *exc):
    if not hasattr(self, 'wall'):
      self.stop()


def cpu_seconds() -> float:
  """User and system CPU seconds of this process, its reaped children and its live ones."""
  total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
                                                               resource.RUSAGE_CHILDREN)
              for f in ('ru_utime', 'ru_stime'))
  ticks = [processes.cpu_ticks(pid) for pid in processes.descendants(os.getpid())]
  return total + sum(t for t in ticks if t is not None) / os.sysconf('SC_CLK_TCK')
