"""This machine's processes, read from /proc (Linux): for the tests that check what a stopped
run leaves running."""

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
