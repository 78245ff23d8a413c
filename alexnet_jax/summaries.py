"""The run's TensorBoard summaries (clu's writer), whose storage failures stop the run with a
message, as a checkpoint's do.

clu's writer appends records to an event file through TensorFlow's file system. A full disk
or a bucket out of reach surfaces there as a TensorFlow error at any write or flush; here it
becomes a StorageError that names the workdir, what the storage said and what to do. What was
written before stays readable: a reader stops at a record cut short.
"""

import jax
from clu import metric_writers

from alexnet_jax import checkpointing


class Summaries:
  """Everything clu's MetricWriter does (write_scalars, write_images, flush, ...), checked."""

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._writer = self._checked(lambda: metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0))()

  def __getattr__(self, name):
    return self._checked(getattr(self._writer, name))

  def _checked(self, method):
    def call(*args, **kwargs):
      try:
        return method(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except  (sorted out just below)
        error = checkpointing.storage_error(
            e, f'The TensorBoard summaries could not be written to {self._workdir}')
        if error is None:
          raise
        raise error from e
    return call
