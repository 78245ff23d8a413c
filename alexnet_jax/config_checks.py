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
COLOR_STATS = ('config', 'computed')   # the config's statistics, or WORKDIR/color_stats.json
SUBTRACT_MEAN = ('pixel', 'image')


def check(config, num_devices: int, num_local_devices: int | None = None) -> None:
  """Raises ConfigError listing every field that is wrong, each with its fix.

  `num_local_devices`: the devices of this host (by default all `num_devices`).
  """
  problems = (_model(config) + _data(config) + _decoding(config) + _colour(config) +
              _optimisation(config) + _durations(config) + _fine_tuning(config) +
              _mesh(config, num_devices, num_local_devices or num_devices))
  if problems:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(
        f'--config.{p}' if '=' in p.split(' ')[0] else p for p in problems))


def check_colour(config) -> None:
  """Raises ConfigError for colour statistics the augmentation cannot use: the commands that
  read a workdir without training check these alone."""
  problems = _colour(config)
  if problems:
    raise ConfigError(f'--config.{problems[0]}')


def _failing(*checks: tuple[bool, str]) -> list[str]:
  """The messages of the checks that fail."""
  return [message for ok, message in checks if not ok]


def _unknown(config, field: str, choices) -> tuple[bool, str]:
  return (config[field] in choices,
          f'{field}={config[field]!r} is unknown: choose one of {tuple(choices)}.')


def _model(config) -> list[str]:
  problems = _failing(
      _unknown(config, 'model', sorted(models.VARIANTS)),
      _unknown(config, 'initialization', models.INITIALIZATIONS),
      _unknown(config, 'dtype', DTYPES),
      *(_unknown(config, field, choices)
        for field, choices in {**models.OPTIONS, **models.CHOICES}.items()),
      (config.width > 0, f'width={config.width} must be positive (1.0 is the paper\'s size).'),
      (0 <= config.dropout_rate < 1, f'dropout_rate={config.dropout_rate} must be in [0, 1).'))
  if config.image_size > 0:
    sizes = models.map_sizes(config.image_size)
    vanished = next((layer for layer, side in sizes if side < 1), None)
    smallest = models.smallest_image_size()
    problems += _failing((
        vanished is None,
        f'image_size={config.image_size} is too small: the maps vanish at {vanished}. '
        f'AlexNet\'s geometry needs patches of at least {smallest}x{smallest}. Smaller images '
        'are upsampled when they are read: e.g. --config.resize_size=72 '
        '--config.image_size=64 for 32x32 images (a store prepared with --size=72).'))
  return problems


def _data(config) -> list[str]:
  return _failing(
      *((config[field] > 0, f'{field}={config[field]} must be a positive number.')
        for field in ('global_batch_size', 'image_size', 'resize_size')),
      (config.resize_size >= config.image_size,
       f'resize_size={config.resize_size} is smaller than image_size={config.image_size}: '
       'patches are cut from the stored square of resize_size.'),
      (config.data_workers >= -1,
       f'data_workers={config.data_workers}: use -1 (picked for the host), 0 (decode in the '
       'trainer\'s process) or a number of processes.'),
      (config.data_threads == -1 or config.data_threads > 0,
       f'data_threads={config.data_threads}: use -1 (picked for the host) or a number.'),
      (not (config.eval_ten_crop and config.dataset == 'synthetic'),
       'eval_ten_crop=True needs real images (a TFDS or image_folder dataset): the synthetic '
       'images are made at the patch size and have no corners to crop.'))


def _decoding(config) -> list[str]:
  share = config.decode_host_share
  return _failing(
      _unknown(config, 'decode', gpu_decode.MODES),
      (share == 'auto' or (isinstance(share, (int, float)) and not isinstance(share, bool)
                           and 0 <= share <= 1),
       f'decode_host_share={share!r} must be a share, from 0 to 1, or \'auto\' (measured).'),
      (0 <= config.decode_hardware_share <= 1,
       f'decode_hardware_share={config.decode_hardware_share} must be a share, from 0 to 1.'),
      (isinstance(config.decode_in_flight, int) and 1 <= config.decode_in_flight <= 8,
       f'decode_in_flight={config.decode_in_flight} must be 1 to 8 batches decoded at once.'))


def _colour(config) -> list[str]:
  return _failing(
      _unknown(config, 'color_stats', COLOR_STATS),
      _unknown(config, 'subtract_mean', SUBTRACT_MEAN),
      (not (config.subtract_mean == 'image' and config.color_stats == 'config'),
       'subtract_mean=image needs the mean image of the training set: compute it once with '
       '`python -m alexnet_jax.commands.color_stats --config=<the same config> '
       '--workdir=<the run\'s workdir>` and train with --config.color_stats=computed.'),
      (all(math.isfinite(s) and s > 0 for s in config.std_rgb),
       f'std_rgb={tuple(config.std_rgb)}: every channel\'s std divides its pixels, so each '
       'must be a positive finite number ((1.0, 1.0, 1.0): raw pixels minus the mean).'),
      (all(math.isfinite(m) for m in config.mean_rgb),
       f'mean_rgb={tuple(config.mean_rgb)} must be finite numbers.'))


def _optimisation(config) -> list[str]:
  # NaN passes every comparison, and a NaN or infinite rate, momentum or decay makes every
  # parameter NaN at the first update, while that step's loss and gradient are still finite.
  return _failing(
      (math.isfinite(config.learning_rate) and config.learning_rate > 0,
       f'learning_rate={config.learning_rate} must be a positive finite number.'),
      *((math.isfinite(config[field]) and config[field] >= 0,
         f'{field}={config[field]} must be a finite number, 0 or more.')
        for field in ('momentum', 'weight_decay')),
      _unknown(config, 'lr_schedule', optim.SCHEDULES))


def _durations(config) -> list[str]:
  return _failing(
      *((config[field] > 0, f'{field}={config[field]} must be a positive number.')
        for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints')),
      (config.checkpoint_every_minutes >= 0,
       f'checkpoint_every_minutes={config.checkpoint_every_minutes} must be 0 (off) or more.'),
      (config.num_train_steps > 0 or config.num_epochs > 0,
       'set num_epochs or num_train_steps to a positive number.'),
      (config.eval_every_steps > 0 or config.eval_every_epochs > 0,
       'set eval_every_epochs or eval_every_steps to a positive number.'))


def _fine_tuning(config) -> list[str]:
  names = [name.strip() for name in config.reinit_layers.split(',') if name.strip()]
  unknown = [name for name in names if name not in models.LAYERS]
  return _failing(
      (not unknown, f'reinit_layers={config.reinit_layers}: {", ".join(unknown)} is no layer '
                    f'of AlexNet; name some of {", ".join(models.LAYERS)}.'),
      (bool(config.init_from) or not names,
       'reinit_layers is set but --config.init_from is not: name the workdir whose other '
       'layers the run starts from.'))


def _mesh(config, num_devices: int, num_local_devices: int) -> list[str]:
  split, batch = config.model_axis_size, config.global_batch_size
  problems = _failing((
      batch <= 0 or batch % num_devices == 0,
      f'global_batch_size={batch} does not split evenly between {num_devices} devices: use a '
      f'multiple of {num_devices}, e.g. {max(1, round(batch / num_devices)) * num_devices}.'))
  if split < 1 or num_devices % split:
    return problems + [f'model_axis_size={split} must divide the {num_devices} devices: the mesh '
                       'is (devices / model_axis_size) x model_axis_size; 1 is data parallelism '
                       'alone.']
  if num_local_devices % split:
    return problems + [f'model_axis_size={split} must divide the {num_local_devices} devices of '
                       'each host: the devices that split the network stay on one host, and '
                       'each host reads its own examples.']
  if config.model not in models.VARIANTS or split == 1:
    return problems
  towers = models.VARIANTS[config.model].towers
  hidden = models.hidden_units(config.model, config.width)
  return problems + _failing(
      (towers == 1 or split == towers, f'model_axis_size={split}: the {config.model} model '
       f'splits over {towers} devices, one tower each; use {towers} (or 1).'),
      (towers > 1 or hidden % split == 0, f'model_axis_size={split} does not divide the '
       f'{hidden} units of fc6 and fc7 (width={config.width}); use a divisor of {hidden}.'))


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
