"""What the training loop keeps beside the train state, saved in every checkpoint, and what
a resume with another global batch size changes."""

import dataclasses
import logging

from alexnet_jax import models, optim
from alexnet_jax.errors import ConfigError


@dataclasses.dataclass
class LoopState:
  """What the loop keeps beside the train state: saved in every checkpoint, restored with it."""
  plateau: optim.PlateauController   # sets the learning rate under the plateau rule
  global_batch_size: int | None = None   # this run's, saved for a resume to compare
  best_top1_error: float | None = None   # the lowest validation top-1 error so far ...
  best_step: int | None = None           # ... and its step
  pending_eval: bool = False   # saved before its step's evaluation ended: evaluate it first
  decode_host_rows: int | None = None   # of each device's rows, the host's (decode_share.py)
  choices: dict | None = None   # the paper's choices this run makes (`choices`)

  def saved(self) -> dict:
    return {'plateau': self.plateau.state_dict(), 'best_top1_error': self.best_top1_error,
            'best_step': self.best_step, 'pending_eval': self.pending_eval,
            'decode_host_rows': self.decode_host_rows,
            'global_batch_size': self.global_batch_size, 'choices': self.choices}

  def load(self, saved: dict) -> None:
    """Takes the state `saved` returned (checkpoints of earlier versions lack its later
    keys); the batch size stays this run's. A checkpoint trained with other choices of the
    paper's is refused: its parameters would go on under another function or data."""
    _check_same_choices(saved.get('choices'), self.choices)
    self.plateau.load_state_dict(saved['plateau'])
    self.best_top1_error = saved.get('best_top1_error')
    self.best_step = saved.get('best_step')
    self.pending_eval = saved.get('pending_eval', False)
    self.decode_host_rows = saved.get('decode_host_rows')

  def resume(self, saved: dict, step: int, train_examples: int, num_steps: int) -> None:
    """`load`s the state saved with checkpoint `step`, and warns of what a resume with
    another global batch size changes."""
    self.load(saved)
    change = batch_size_change(step, saved.get('global_batch_size'), self.global_batch_size,
                               train_examples, num_steps)
    if change:
      logging.warning('%s', change)


def batch_size_change(step: int, saved: int | None, batch: int, train_examples: int,
                      num_steps: int) -> str | None:
  """What resuming `step`, saved with a global batch of `saved`, changes with `batch`: the
  epoch a step is and where the data order goes on (`data/loader.py`: batch s is examples
  [s * batch, (s + 1) * batch) of the epochs' orders). None if nothing changes."""
  if saved is None or saved == batch:   # the same, or saved before the batch size was kept
    return None
  per_epoch, saved_per_epoch = train_examples // batch, train_examples // saved
  return (f'Resuming step {step}, saved with global_batch_size={saved}, with {batch}: step '
          f'{step} is now epoch {step / per_epoch:.2f} (it was {step / saved_per_epoch:.2f}), '
          f'the next batch starts at example {step % per_epoch * batch} of epoch '
          f'{step // per_epoch}\'s order (it was example {step % saved_per_epoch * saved} of '
          f'epoch {step // saved_per_epoch}\'s; examples between are skipped or read again), the '
          f'run ends at step {num_steps} (epoch {num_steps / per_epoch:.2f}), and the learning '
          'rate is not scaled with the batch.')


def choices(config) -> dict:
  """The paper's choices that `config` makes and a checkpoint records (README, "The paper's
  claims"): those that leave the parameters' shapes as they are."""
  return {**models.choices_of(config), 'dropout_rate': config.dropout_rate,
          'random_patches': config.random_patches, 'reflections': config.reflections,
          'pca_lighting_std': config.pca_lighting_std}


def _check_same_choices(saved: dict | None, here: dict | None) -> None:
  """Checkpoints saved before the choices were recorded are taken as they are."""
  if saved is None or here is None:
    return
  differ = [key for key in here if key in saved and saved[key] != here[key]]
  if differ:
    raise ConfigError(
        'This workdir\'s checkpoints were trained with '
        f'{", ".join(f"{k}={saved[k]!r}" for k in differ)}; the config says '
        f'{", ".join(f"{k}={here[k]!r}" for k in differ)}. Resume with the choices they were '
        f'trained with ({" ".join(f"--config.{k}={saved[k]}" for k in differ)}), or train the '
        'new choices in a new --workdir.')
