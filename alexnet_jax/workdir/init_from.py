"""`--config.init_from=DIR`: a run that starts from another workdir's parameters.

Every layer is taken from DIR's best checkpoint (its newest where it keeps no best one),
except fc8 when the two runs' class counts differ and any layer named in
`--config.reinit_layers`: those keep this run's own initialisation. The optimiser state
(momentum) and the step start afresh. DIR is only read; it may be a workdir trained here or
one made by `python -m alexnet_jax.commands.weights import`.
"""

import logging

import jax
import numpy as np

from alexnet_jax.errors import ConfigError
from alexnet_jax.workdir import model_record, storage, trained



def reinit_layers(config) -> list[str]:
  """The layers `config.reinit_layers` names (checked by `config_checks`)."""
  return [name.strip() for name in config.reinit_layers.split(',') if name.strip()]


def check(config) -> None:
  """Refuses at start-up an init_from that is not there (its fields are checked by
  `config_checks`)."""
  if config.init_from and not storage.workdir_path(config.init_from).exists():
    raise ConfigError(f'--config.init_from={config.init_from} does not exist: name a trained '
                      'workdir, or one written by python -m alexnet_jax.commands.weights import.')


def initial_params(config, params):
  """`params` (this run's initialisation, placed on its mesh) with the layers of
  `config.init_from` in place of its own, placed the same way."""
  source = config.init_from
  which = 'best' if trained.best_step(source) is not None else 'latest'
  saved, step = trained.restore_saved_params(source, which)
  fresh = set(reinit_layers(config))
  differences = []
  for layer in sorted(params):
    here = {k: tuple(v.shape) for k, v in params[layer].items()}
    there = {k: tuple(v.shape) for k, v in saved.get(layer, {}).items()}
    if layer in fresh or here == there:
      continue
    if layer == 'fc8' and there and here['kernel'][0] == there['kernel'][0]:
      logging.info('fc8 starts afresh: %d classes in %s, %d here.', there['bias'][0], source,
                   here['bias'][0])
      fresh.add(layer)
      continue
    differences.append(f'{layer}: {there or "missing"} there, {here} here')
  if differences:
    raise ConfigError(
        f'--config.init_from={source} holds another network than this run builds '
        f'({"; ".join(differences[:4])}{" ..." if len(differences) > 4 else ""}). Train with '
        "the model, width and image_size it was trained with, or name the layers that differ "
        'in --config.reinit_layers to start them afresh.')
  _warn_if_inputs_differ(config, source)
  logging.info('Starting from %s (step %d of %s); afresh: %s.', ', '.join(
      sorted(set(params) - fresh)), step, source, ', '.join(sorted(fresh)) or 'nothing')
  return {layer: params[layer] if layer in fresh else jax.tree.map(_placed_like,
                                                                    saved[layer], params[layer])
          for layer in params}


def _placed_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """`value` with the sharding of `like`; each host places its own devices' parts."""
  return jax.make_array_from_callback(like.shape, like.sharding,
                                      lambda index: value[index].astype(like.dtype))


def _warn_if_inputs_differ(config, source: str) -> None:
  record = model_record.read(source)
  if record is None:
    return
  for field in ('mean_rgb', 'std_rgb'):
    there, here = list(record.config[field]), list(config[field])
    if not np.allclose(there, here):
      logging.warning('%s was trained on inputs of %s=%s; this run gives it %s=%s. Fine-tune '
                      'with the same normalisation (e.g. --config=configs/alexnet.py:torchvision '
                      'for imported torchvision weights).', source, field, there, field, here)
