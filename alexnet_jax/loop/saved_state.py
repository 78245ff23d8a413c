"""What the training loop keeps beside the train state, saved in every checkpoint, and what
a resume with another global batch size changes."""

import dataclasses

from alexnet_jax import optim


@dataclasses.dataclass
class LoopState:
  """What the loop keeps beside the train state: saved in every checkpoint, restored with it."""
  plateau: optim.PlateauController   # sets the learning rate under the plateau rule
  global_batch_size: int | None = None   # this run's, saved for a resume to compare
  best_top1_error: float | None = None   # the lowest validation top-1 error so far ...
  best_step: int | None = None           # ... and its step
  pending_eval: bool = False   # saved before its step's evaluation ended: evaluate it first
  decode_host_rows: int | None = None   # of each device's rows, the host's (decode_share.py)

  def saved(self) -> dict:
    return {'plateau': self.plateau.state_dict(), 'best_top1_error': self.best_top1_error,
            'best_step': self.best_step, 'pending_eval': self.pending_eval,
            'decode_host_rows': self.decode_host_rows,
            'global_batch_size': self.global_batch_size}

  def load(self, saved: dict) -> None:
    """Takes the state `saved` returned (checkpoints of earlier versions lack its later
    keys); the batch size stays this run's."""
    self.plateau.load_state_dict(saved['plateau'])
    self.best_top1_error = saved.get('best_top1_error')
    self.best_step = saved.get('best_step')
    self.pending_eval = saved.get('pending_eval', False)
    self.decode_host_rows = saved.get('decode_host_rows')


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
