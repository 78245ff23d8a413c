"""Refuses a config the trainer cannot run, before any data is read or code compiled."""

import math
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from alexnet_jax import models, optim
from alexnet_jax.data import gpu_decode
from alexnet_jax.errors import ConfigError
from alexnet_jax.workdir import storage

DTYPES = ('auto', 'float32', 'bfloat16')


def check(config, num_devices: int, num_local_devices: int | None = None) -> None:
  """Raises ConfigError listing every field that is wrong, each with its fix.

  `num_local_devices`: the devices of this host (by default all `num_devices`).
  """
  num_local_devices = num_local_devices or num_devices
  problems = []

  def need(ok: bool, message: str):
    if not ok:
      problems.append(message)

  need(config.model in models.VARIANTS,
       f'model={config.model!r} is unknown: choose one of {sorted(models.VARIANTS)}.')
  need(config.initialization in models.INITIALIZATIONS,
       f'initialization={config.initialization!r} is unknown: choose one of '
       f'{models.INITIALIZATIONS}.')
  need(config.dtype in DTYPES, f'dtype={config.dtype!r} is unknown: choose one of {DTYPES}.')
  for field in ('global_batch_size', 'image_size', 'resize_size', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints'):
    need(config[field] > 0, f'{field}={config[field]} must be a positive number.')
  need(config.width > 0, f'width={config.width} must be positive (1.0 is the paper\'s size).')
  need(config.data_workers >= -1,
       f'data_workers={config.data_workers}: use -1 (picked for the host), 0 (decode in the '
       'trainer\'s process) or a number of processes.')
  need(config.data_threads == -1 or config.data_threads > 0,
       f'data_threads={config.data_threads}: use -1 (picked for the host) or a number.')
  need(config.decode in gpu_decode.MODES,
       f'decode={config.decode!r} is unknown: choose one of {gpu_decode.MODES}.')
  share = config.decode_host_share
  need(share == 'auto' or (isinstance(share, (int, float)) and not isinstance(share, bool)
                           and 0 <= share <= 1),
       f'decode_host_share={share!r} must be a share, from 0 to 1, or \'auto\' (measured).')
  need(0 <= config.decode_hardware_share <= 1,
       f'decode_hardware_share={config.decode_hardware_share} must be a share, from 0 to 1.')
  need(isinstance(config.decode_in_flight, int) and 1 <= config.decode_in_flight <= 8,
       f'decode_in_flight={config.decode_in_flight} must be 1 to 8 batches decoded at once.')
  need(0 <= config.dropout_rate < 1, f'dropout_rate={config.dropout_rate} must be in [0, 1).')
  need(config.checkpoint_every_minutes >= 0,
       f'checkpoint_every_minutes={config.checkpoint_every_minutes} must be 0 (off) or more.')
  # NaN passes every comparison, and a NaN or infinite rate, momentum or decay makes every
  # parameter NaN at the first update, while that step's loss and gradient are still finite.
  need(math.isfinite(config.learning_rate) and config.learning_rate > 0,
       f'learning_rate={config.learning_rate} must be a positive finite number.')
  for field in ('momentum', 'weight_decay'):
    need(math.isfinite(config[field]) and config[field] >= 0,
         f'{field}={config[field]} must be a finite number, 0 or more.')
  need(all(math.isfinite(s) and s > 0 for s in config.std_rgb),
       f'std_rgb={tuple(config.std_rgb)}: every channel\'s std divides its pixels, so each must '
       'be a positive finite number ((1.0, 1.0, 1.0): raw pixels minus the mean).')
  need(all(math.isfinite(m) for m in config.mean_rgb),
       f'mean_rgb={tuple(config.mean_rgb)} must be finite numbers.')
  need(config.lr_schedule in optim.SCHEDULES,
       f'lr_schedule={config.lr_schedule!r} is unknown: choose one of {optim.SCHEDULES}.')
  if config.image_size > 0:
    sizes = models.map_sizes(config.image_size)
    vanished = next((layer for layer, side in sizes if side < 1), None)
    need(vanished is None,
         f'image_size={config.image_size} is too small: the maps vanish at {vanished}. '
         f'AlexNet\'s geometry needs patches of at least {models.smallest_image_size()}x'
         f'{models.smallest_image_size()}. Smaller images are upsampled when they are read: '
         f'e.g. --config.resize_size=72 --config.image_size=64 for 32x32 images (a store '
         'prepared with --size=72).')
  need(config.resize_size >= config.image_size,
       f'resize_size={config.resize_size} is smaller than image_size={config.image_size}: '
       'patches are cut from the stored square of resize_size.')
  need(config.num_train_steps > 0 or config.num_epochs > 0,
       'set num_epochs or num_train_steps to a positive number.')
  need(config.eval_every_steps > 0 or config.eval_every_epochs > 0,
       'set eval_every_epochs or eval_every_steps to a positive number.')
  need(not (config.eval_ten_crop and config.dataset == 'synthetic'),
       'eval_ten_crop=True needs real images (a TFDS or image_folder dataset): the synthetic '
       'images are made at the patch size and have no corners to crop.')
  split = config.model_axis_size
  if split < 1 or num_devices % split:
    problems.append(f'model_axis_size={split} must divide the {num_devices} devices: the mesh is '
                    f'(devices / model_axis_size) x model_axis_size; 1 is data parallelism alone.')
  elif num_local_devices % split:
    problems.append(f'model_axis_size={split} must divide the {num_local_devices} devices of '
                    'each host: the devices that split the network stay on one host, and '
                    'each host reads its own examples.')
  elif config.model in models.VARIANTS and split > 1:
    towers = models.VARIANTS[config.model].towers
    if towers > 1 and split != towers:
      problems.append(f'model_axis_size={split}: the {config.model} model splits over '
                      f'{towers} devices, one tower each; use {towers} (or 1).')
    hidden = models.hidden_units(config.model, config.width)
    if towers == 1 and hidden % split:
      problems.append(f'model_axis_size={split} does not divide the {hidden} units of fc6 and '
                      f'fc7 (width={config.width}); use a divisor of {hidden}.')
  if config.global_batch_size > 0 and config.global_batch_size % num_devices:
    problems.append(
        f'global_batch_size={config.global_batch_size} does not split evenly between '
        f'{num_devices} devices: use a multiple of {num_devices}, e.g. '
        f'{max(1, round(config.global_batch_size / num_devices)) * num_devices}.')
  if problems:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(
        f'--config.{p}' if '=' in p.split(' ')[0] else p for p in problems))


def check_classes(config, num_classes: int) -> None:
  """Raises ConfigError unless fc8's outputs split evenly over the `model` axis."""
  if num_classes % config.model_axis_size:
    raise ConfigError(
        f'--config.model_axis_size={config.model_axis_size} does not divide the dataset\'s '
        f'{num_classes} classes, which fc8 splits between the devices of the model axis: use a '
        'divisor of the class count.')


def check_workdir(workdir: str) -> None:
  """Raises ConfigError unless `workdir` (a local or cloud path) can be created and written."""
  path = epath.Path(workdir)
  probe = path / f'.write_probe_{uuid.uuid4().hex}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    fix = ('check the network, the bucket and its permissions from this host'
           if storage.unreachable(e) else 'choose a folder this user may write to')
    raise ConfigError(f'--workdir={workdir} cannot be written ({type(e).__name__}: {e}): '
                      f'{fix}.') from e


def check_workdir_shared(workdir: str) -> None:
  """On several hosts: raises ConfigError unless every host sees what process 0 writes in
  `workdir`. A host-local folder would let each host resume from its own checkpoints, at
  different steps, and the job would hang."""
  if jax.process_count() == 1:
    return
  token = uuid.uuid4().hex
  token = bytes(multihost_utils.broadcast_one_to_all(
      np.frombuffer(token.encode(), np.uint8))).decode()
  path = epath.Path(workdir) / f'.shared_check_{token}'
  if jax.process_index() == 0:
    path.write_text(token)
  multihost_utils.sync_global_devices('workdir check written')
  try:
    seen = path.exists() and path.read_text() == token
  except OSError:
    seen = False
  seen_by = np.asarray(multihost_utils.process_allgather(np.bool_(seen))).reshape(-1)
  multihost_utils.sync_global_devices('workdir check read')
  if jax.process_index() == 0:
    path.unlink()
  if not seen_by.all():
    blind = ', '.join(str(i) for i in np.flatnonzero(~seen_by))
    raise ConfigError(
        f'--workdir={workdir} is not shared by all hosts: process {blind} cannot see the file '
        'process 0 wrote there (a folder on each host\'s own disk?). Use a workdir every host '
        'reads and writes: a shared filesystem, or gs://BUCKET/...')
