"""The training metrics between logs: averaged over the steps written, checked before saves."""

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.loop import train_metrics


class _Writer:
  def __init__(self):
    self.written = []

  def write_scalars(self, step, scalars):
    self.written.append((step, scalars))


class _Progress:
  def report(self, step):
    return {'steps_per_sec': 2.0}

  def exclude(self, wall, cpu):
    pass


class _Checkpoints:
  def __init__(self, latest):
    self.latest = latest

  def latest_step(self):
    return self.latest

  def path(self, step):
    return f'/w/checkpoints/{step}'


def _metrics(loss, finite=True):
  return {'loss': np.float32(loss), 'grad_norm': np.float32(2 * loss), 'finite': np.bool_(finite)}


def test_a_log_writes_the_means_of_its_steps_their_skips_the_rate_and_the_epoch():
  writer = _Writer()
  log = train_metrics.MetricsLog(writer, steps_per_epoch=4, progress=_Progress())
  log.skipped(batch_number=1, count=2)   # step 2's batch
  log.skipped(batch_number=4, count=1)   # step 5's: told ahead, written with step 5
  for step, loss in ((1, 1.0), (2, 2.0), (3, 6.0)):
    log.add(step, _metrics(loss))
  log.write(0.01)
  assert writer.written == []   # nothing checked yet: nothing is written
  log.check(_Checkpoints(None))
  log.write(0.01)
  (step, scalars), = writer.written
  assert step == 3
  assert scalars == {'train/loss': 3.0, 'train/grad_norm': 6.0, 'train/skipped_records': 0 + 2,
                     'train/steps_per_sec': 2.0, 'train/learning_rate': 0.01,
                     'train/epoch': 0.75}
  for step in (4, 5):
    log.add(step, _metrics(1.0))
  log.check(_Checkpoints(None))
  log.write(0.001)
  assert writer.written[-1][1]['train/skipped_records'] == 1


@pytest.mark.parametrize('latest, named', [(4, '/w/checkpoints/4'), (None, 'none (no checkpoint yet)')])
def test_the_first_step_that_is_not_finite_stops_the_run_naming_the_last_good_checkpoint(
    latest, named):
  log = train_metrics.MetricsLog(_Writer(), 4, _Progress())
  log.add(5, _metrics(1.0))
  log.add(6, _metrics(float('nan'), finite=False))
  log.add(7, _metrics(float('inf'), finite=False))
  with pytest.raises(errors.DivergenceError) as raised:
    log.check(_Checkpoints(latest))
  message = str(raised.value)
  assert message.startswith('Training diverged at step 6: the loss or a gradient is not finite '
                            '(loss nan, gradient norm nan).')
  assert f'the last good checkpoint is {named}.' in message
