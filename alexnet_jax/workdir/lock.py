"""One run per workdir: WORKDIR/run.lock, held with `fcntl.flock` for the run's life.

The kernel releases an flock when its process ends, however it ends, so a run that was
killed never blocks the next one; local disks and network file systems (NFS emulates it
with its own locks) both honour it. The holder's host, process id and start time are
written in the file, for the message a second run gets. The file is removed when the run
ends, so a run leaves no trace of it; a run that finds it gone after locking it (removed
by the run before, in between) opens it again, so two runs never hold two files.

On several hosts only process 0 locks (the others share the workdir by design) and tells
them what it found. Object stores (gs://) have no such lock: nothing is locked there
(README, "Workdirs on Cloud Storage").
"""

import datetime
import fcntl
import json
import logging
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

from alexnet_jax import config_checks
from alexnet_jax.workdir import storage
from alexnet_jax.errors import ConfigError

FILENAME = 'run.lock'


class WorkdirLock:
  """The lock of a run on its workdir; `release` ends it and removes what taking it made."""

  def __init__(self, path: str | None = None, descriptor: int | None = None,
               new_folder: str | None = None):
    self._path, self._descriptor, self._new_folder = path, descriptor, new_folder

  def release(self) -> None:
    if self._descriptor is not None:
      try:
        os.unlink(self._path)   # while still held: no other run has it open and locked
      except FileNotFoundError:
        pass
      os.close(self._descriptor)
      self._descriptor = None
    if self._new_folder is not None:
      try:
        os.rmdir(self._new_folder)   # only if the run left it empty: it was refused
      except OSError:
        pass
      self._new_folder = None


def hold(workdir: str) -> WorkdirLock:
  """Checks that `workdir` can be written (creating it), and locks it for this run.

  Raises ConfigError naming the run that holds it. On several hosts every process calls
  it; process 0 locks, and all raise if it was refused.
  """
  root = storage.workdir_path(workdir)
  new_folder = (str(root) if jax.process_index() == 0 and '://' not in workdir and
                not root.exists() else None)
  config_checks.check_workdir(workdir)
  lock, refusal = WorkdirLock(new_folder=new_folder), None
  if jax.process_index() == 0:
    try:
      lock = _lock(workdir, root, new_folder)
    except ConfigError as e:
      refusal = e
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
    if refused and refusal is None:
      refusal = ConfigError(f'--workdir={workdir} is in use by another run: process 0\'s log '
                            'names it.')
  if refusal is not None:
    lock.release()
    raise refusal
  return lock


def _lock(workdir: str, root, new_folder: str | None) -> WorkdirLock:
  if '://' in workdir:
    logging.info('%s is not locked: an object store has no lock; start one run at a time '
                 'on it.', workdir)
    return WorkdirLock(new_folder=new_folder)
  path = str(root / FILENAME)
  while True:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(descriptor)
      os.close(descriptor)
      raise ConfigError(_in_use_message(workdir, path, holder)) from None
    except OSError as e:   # a file system without locks: run, as before there were any
      os.close(descriptor)
      logging.warning('%s cannot be locked (%s): nothing stops a second run on this workdir.',
                      path, storage.describe(e))
      return WorkdirLock(new_folder=new_folder)
    try:
      if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(descriptor)   # removed by its last holder meanwhile: lock the file there now
  os.ftruncate(descriptor, 0)
  os.pwrite(descriptor, json.dumps(_identity()).encode(), 0)
  return WorkdirLock(path, descriptor, new_folder)


def _identity() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%d %H:%M:%S UTC')}


def _read_holder(descriptor: int) -> dict | None:
  try:
    return json.loads(os.pread(descriptor, 4096, 0).decode())
  except ValueError:   # empty: its holder is starting and has not written it yet
    return None


def _in_use_message(workdir: str, path: str, holder: dict | None) -> str:
  who = (f'process {holder["pid"]} on host {holder["host"]}, started {holder["started"]}'
         if holder else 'a run that is starting')
  return (f'--workdir={workdir} is in use by another run ({who}): two runs on one workdir '
          'would overwrite each other\'s checkpoints. Wait for it to end, or stop it, then run '
          'again. A run that was killed, or whose host went down, frees the workdir by itself '
          f'(on a network file system once its lease expires, a minute or two): {path} need not '
          'be deleted.')
