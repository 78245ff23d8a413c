"""What Orbax logs, kept to what a user needs: the one place its logs are quietened.

Orbax logs every stage of every save and read at INFO, its read-only notes
as warnings, and, from its own threads, the traceback of a save the storage
refused, which the run reports itself in one message (`storage.py`).
"""

import logging
import sys
import traceback

from absl import logging as absl_logging

from alexnet_jax.workdir import storage


def _from_orbax(record) -> bool:
  return '/orbax/' in record.pathname


def keep_warnings() -> None:
  """For training runs: Orbax's warnings and errors, not its progress."""
  # logging's levels: absl.logging.WARNING is absl's own number (-1).
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or not _from_orbax(record))


def keep_errors() -> None:
  """For commands whose output is their answer: Orbax's errors only, and others' warnings."""
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= (logging.ERROR if _from_orbax(record) else
                                        logging.WARNING))


class _StorageFailureLogs(logging.Filter):
  """Drops what Orbax's threads, and asyncio for the writes of theirs it finds unfinished at
  exit, log of a storage failure, traceback and all: the run stops with one message that
  says it (`checkpointing.Checkpoints`). Anything else passes."""

  def filter(self, record) -> bool:
    if record.exc_info and (_from_orbax(record) or record.name == 'asyncio'):
      return storage.storage_failure(record.exc_info[1]) is None
    return True


def drop_storage_failures() -> None:
  """Once: Orbax's logs of a storage failure dropped, and so is the 'Event loop is closed'
  of each of tensorstore's writes that ends after the save it belonged to has failed and
  Orbax has closed that save's event loop (Python reports them as unraisable, from
  `call_soon_threadsafe`: a late answer nobody waits for)."""
  if any(isinstance(f, _StorageFailureLogs) for f in logging.getLogger('absl').filters):
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
