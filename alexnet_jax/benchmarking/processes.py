"""This machine's processes, read from /proc (Linux): a run's decoding processes, for the
benchmarks that count the CPU time they use and the tests that check what a stopped run
leaves running."""

import pathlib


def _stats():
  """(pid, the fields of /proc/PID/stat after the command name) of every live process."""
  for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
    try:
      fields = stat.read_text().rsplit(')', 1)[1].split()   # the name may hold spaces
    except OSError:
      continue   # gone meanwhile
    yield int(stat.parent.name), fields


def children(pid: int) -> list[int]:
  """The processes whose parent is `pid`."""
  return [child for child, fields in _stats() if int(fields[1]) == pid]


def group(pgid: int) -> list[int]:
  """The processes of process group `pgid`."""
  return [member for member, fields in _stats() if int(fields[2]) == pgid]


def descendants(pid: int) -> list[int]:
  """The processes started by `pid`, by those it started, and so on."""
  parents = {child: int(fields[1]) for child, fields in _stats()}
  found, frontier = [], [pid]
  while frontier:
    frontier = [child for child, parent in parents.items() if parent in frontier]
    found += frontier
  return found


def cpu_ticks(pid: int) -> int | None:
  """User and system CPU time of a live process, in clock ticks; None if it is gone."""
  try:
    fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  except OSError:
    return None
  return int(fields[11]) + int(fields[12])   # utime, stime
