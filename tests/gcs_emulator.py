"""A Google Cloud Storage API on localhost for tests: gcp-storage-emulator, in this process.

Every library that reads or writes a `gs://` workdir for the trainer is pointed at it:
- etils.epath (folders, JSON, tokens, renames) through fsspec's gcsfs;
- tensorstore (Orbax's arrays) through its GCS driver.
TensorFlow's own GCS file system (clu's summary writer, `plot_curves`' event reader) has no
setting for another endpoint, so it cannot be tested here (README, "Workdirs on Cloud Storage").
"""

import contextlib
import logging
import os
import socket
from http import HTTPStatus

from etils.epath import gpath
from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

BUCKET = 'alexnet-test'


def _move(request, response, storage, *args, **kwargs):
  """objects.move, which gcsfs renames with and the emulator lacks (it answers 501, which
  gcsfs retries for about 30 s before it copies and deletes): a copy, then a delete."""
  p = request.params
  try:
    moved = objects._copy(request.base_url, storage, p['bucket_name'], p['object_id'],  # noqa: SLF001
                          p['bucket_name'], p['dest_object_id'])
    objects._delete(storage, p['bucket_name'], p['object_id'])  # noqa: SLF001
    response.json(moved)
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND


def _download(request, response, storage, *args, **kwargs):
  """objects.get of the contents, with the object's generation in `x-goog-generation` as GCS
  sends it: tensorstore (Orbax's arrays) reads it to write conditionally, and the emulator
  leaves it out."""
  _plain_download(request, response, storage, *args, **kwargs)
  try:
    generation = storage.get_file_obj(request.params['bucket_name'],
                                      request.params['object_id'])['generation']
  except NotFound:
    return
  response['x-goog-generation'] = generation


_plain_download = objects.download
server.HANDLERS = tuple(
    (pattern, {method: _download if handler is _plain_download else handler
               for method, handler in methods.items()})
    for pattern, methods in server.HANDLERS)

_MOVE_ROUTE = (r'^(?:/storage/v1)?/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
               r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {'POST': _move})
if _MOVE_ROUTE not in server.HANDLERS:
  server.HANDLERS = (_MOVE_ROUTE, *server.HANDLERS)
# It logs every 404 at ERROR level; Orbax and gcsfs ask for absent objects all the time.
logging.getLogger('gcp_storage_emulator').setLevel(logging.CRITICAL)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  """The emulator on `port`, its objects kept in `data_dir`, so that it can be stopped (the
  storage vanishes) and started again with what it held."""

  def __init__(self, data_dir: str):
    self.port, self.data_dir = free_port(), data_dir
    self._server, self._started = None, False

  def start(self) -> None:
    self._server = server.create_server('127.0.0.1', self.port, data_dir=self.data_dir,
                                        default_bucket=None if self._started else BUCKET)
    self._server._api.daemon = True   # noqa: SLF001  (a failed test must not hang at exit)
    self._server.start()
    # A client that hangs up early (gcsfs does, on purpose) is no error worth a traceback.
    self._server._api._httpd.handle_error = lambda request, address: None   # noqa: SLF001
    self._started = True

  def stop(self) -> None:
    """Closes its socket: from now on, connections to it are refused."""
    self._server.stop()

  def environment(self) -> dict[str, str]:
    """The variables that point gcsfs, etils and tensorstore at the emulator, anonymously."""
    url = f'http://127.0.0.1:{self.port}'
    return {'STORAGE_EMULATOR_HOST': url, 'FSSPEC_GCS_TOKEN': 'anon',
            # gcsfs would otherwise probe the bucket's layout over gRPC, 60 s a call.
            'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
            # etils uses TensorFlow's file system for gs:// where TensorFlow is installed.
            'EPATH_USE_TF': 'false',
            'TENSORSTORE_GCS_HTTP_URL': url, 'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anonymous'}


@contextlib.contextmanager
def running(data_dir: str):
  """An emulator started, the environment pointed at it, and both undone after."""
  emulator = Emulator(data_dir)
  emulator.start()
  saved = {k: os.environ.get(k) for k in emulator.environment()}
  os.environ.update(emulator.environment())
  gpath._is_tf_installed.cache_clear()   # noqa: SLF001  (etils reads EPATH_USE_TF once)
  try:
    yield emulator
  finally:
    emulator.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    gpath._is_tf_installed.cache_clear()   # noqa: SLF001
