"""The run's TensorBoard summaries, and the same values in the log.

Events are written with TensorBoard's own event-file writer, which needs no
TensorFlow: a GPU host with JAX alone trains and writes summaries. (Where
TensorFlow is installed, TensorBoard writes through its file system; without
it, local paths and fsspec's, gs:// through gcsfs.) Only process 0 writes
events; every process logs.

A full disk or a bucket out of reach surfaces at a write or a flush; here it
becomes a StorageError that names the workdir, what the storage said and what
to do. What was written before stays readable: a reader stops at a record cut
short.
"""

import io
import logging
import time

import numpy as np
from etils import epath
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util

from alexnet_jax.workdir import storage


class Summaries:
  """write_scalars, write_images, write_hparams, flush, close; storage failures named."""

  def __init__(self, workdir: str, write_events: bool = True):
    self._workdir = str(workdir)
    self._events = (self._checked(event_file_writer.EventFileWriter, self._workdir)
                    if write_events else None)

  def write_scalars(self, step: int, scalars: dict) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={_short(v)}' for k, v in sorted(scalars.items())))
    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def write_images(self, step: int, images: dict) -> None:
    """`images`: {tag: uint8 [H, W, 3]}, each written as a PNG."""
    values = []
    for tag, image in images.items():
      image = np.asarray(image, np.uint8)
      png = io.BytesIO()
      Image.fromarray(image).save(png, format='PNG')
      values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
          height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
          encoded_image_string=png.getvalue())))
    self._add(step, values)

  def write_hparams(self, hparams: dict) -> None:
    logging.info('[Hyperparameters] %s', hparams)
    if self._events is not None:
      self._checked(self._events.add_event, event_pb2.Event(
          wall_time=time.time(), step=0, summary=hparams_summary.hparams_pb(hparams)))

  def flush(self) -> None:
    if self._events is not None:
      self._checked(self._events.flush)

  def close(self) -> None:
    if self._events is not None:
      self._checked(self._events.close)

  def _add(self, step: int, values: list) -> None:
    if self._events is not None:
      self._checked(self._events.add_event, event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

  def _checked(self, method, *args):
    try:
      return method(*args)
    except Exception as e:  # pylint: disable=broad-except  (sorted out just below)
      error = storage.storage_error(
          e, f'The TensorBoard summaries could not be written to {self._workdir}')
      if error is None:
        raise
      raise error from e


def _short(value) -> str:
  return f'{value:.6g}' if isinstance(value, float) else str(value)


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every event file of `workdir`, sorted by step."""
  scalars = {}
  for path in sorted(epath.Path(workdir).glob('events.out.tfevents.*')):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      for value in event.summary.value:
        if value.HasField('simple_value'):
          scalars.setdefault(value.tag, {})[event.step] = value.simple_value
        elif value.HasField('tensor') and not value.tensor.string_val:   # as TF 2 writes them
          array = tensor_util.make_ndarray(value.tensor)
          if array.ndim == 0:
            scalars.setdefault(value.tag, {})[event.step] = float(array)
  return {tag: sorted(points.items()) for tag, points in scalars.items()}


def flat_hparams(config) -> dict:
  """A config as {dotted name: value}, each a number, string or bool (TensorBoard's hparams)."""
  flat = {}

  def walk(prefix, value):
    if hasattr(value, 'items'):
      for k, v in value.items():
        walk(f'{prefix}{k}.', v)
    else:
      flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

  walk('', config)
  return flat
