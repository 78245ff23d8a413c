"""The curve plot reads back what the trainer's writer wrote, and draws it."""

import ml_collections
import pytest

from alexnet_jax.commands import plot_curves
from alexnet_jax.loop import summaries


def test_scalars_written_by_the_trainer_are_read_back_and_plotted(tmp_path):
  writer = summaries.Summaries(str(tmp_path))
  for step in (10, 20, 30):
    writer.write_scalars(step, {'train/loss': 3.0 - step / 10, 'train/epoch': step / 10})
  writer.write_scalars(20, {'eval/loss': 1.5, 'eval/top1_error': 0.6, 'eval/top5_error': 0.2})
  writer.flush()
  scalars = summaries.read_scalars(str(tmp_path))
  assert scalars['train/loss'] == [(10, 2.0), (20, 1.0), (30, 0.0)]
  assert scalars['eval/top1_error'] == [(20, 0.6000000238418579)]
  out = tmp_path / 'curves.png'
  plot_curves.plot(str(tmp_path), str(out))
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 10_000


def test_the_falls_of_the_learning_rate_are_the_evaluations_the_plateau_rule_acted_on():
  config = ml_collections.ConfigDict(dict(
      lr_schedule='plateau', learning_rate=0.01,
      plateau=dict(patience=2, min_delta=0.01, factor=0.1, max_drops=3)))
  # Worked by hand: best 0.70, 0.60; 0.595 and 0.61 do not beat 0.60 by 0.01 -> drop at 292;
  # 0.45 is a new best; 0.46 and 0.445 do not beat it -> drop at 511.
  errors = [0.7, 0.6, 0.595, 0.61, 0.45, 0.46, 0.445]
  scalars = {'eval/top1_error': [(73 * (i + 1), e) for i, e in enumerate(errors)]}
  drops = plot_curves.rate_drops(scalars, config)
  assert [step for step, _ in drops] == [292, 511]
  assert [rate for _, rate in drops] == pytest.approx([0.001, 0.0001])
  config.lr_schedule = 'cosine'
  assert plot_curves.rate_drops(scalars, config) == []


def test_scalars_tensorflow_wrote_are_read_too(tmp_path):
  """Event files of earlier runs, whose scalars TensorFlow's summary writer wrote as tensors."""
  tf = pytest.importorskip('tensorflow')
  with tf.summary.create_file_writer(str(tmp_path)).as_default():
    tf.summary.scalar('eval/top1_error', 0.25, step=7)
  assert summaries.read_scalars(str(tmp_path)) == {'eval/top1_error': [(7, 0.25)]}
