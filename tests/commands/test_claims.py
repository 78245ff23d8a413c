"""The claims table: its arithmetic against hand-computed rows, and (slow) its runs."""

import json

import pytest

from alexnet_jax.commands import claims
from alexnet_jax.workdir import checkpointing
from tests.conftest import run_config, steps_saved

ROWS = tuple(row for row in claims.ROWS if row.name in ('no_lrn', 'no_dropout'))


def test_each_row_is_its_difference_from_the_seeds_mean_against_their_spread():
  results = {'baseline_seed0': {'top1': 30.0, 'top5': 5.0, 'train_top1': 10.0},
             'baseline_seed1': {'top1': 31.0, 'top5': 6.0, 'train_top1': 12.0},
             'no_lrn': {'top1': 32.0, 'top5': 5.8, 'train_top1': 11.0},
             'no_dropout': {'top1': 30.9, 'top5': 4.0, 'train_top1': 1.5}}
  lines = claims.table(results, [0, 1], ROWS).splitlines()
  assert lines[2] == "| the paper's net, seed 0 | | 30.0 / 5.0 | | | 10.0, 20.0 |"
  assert lines[4] == ('| without response normalisation (`lrn=false`) | top-1 +1.4, top-5 +1.2 '
                      '| 32.0 / 5.8 | +1.5 / +0.3 | yes / no | 11.0, 21.0 |')
  assert lines[5] == ('| without dropout (`dropout_rate=0`) | "substantial overfitting" '
                      '| 30.9 / 4.0 | +0.4 / -1.5 | no / yes | 1.5, 29.4 |')
  assert lines[-1] == ("The seeds' spread (the paper's net, seeds 0, 1): 1.0 points of top-1, "
                       '1.0 of top-5.')


@pytest.mark.slow
def test_the_rows_train_their_choices_and_a_second_call_trains_nothing(tmp_path):
  config = run_config(2, model='paper')
  first = claims.measure(config, str(tmp_path), [0, 1], ROWS)
  assert set(first) == {'baseline_seed0', 'baseline_seed1', 'no_lrn', 'no_dropout'}
  assert all(0 <= v <= 100 for r in first.values() for v in r.values())
  checkpoints = checkpointing.Checkpoints(str(tmp_path / 'no_lrn' / 'checkpoints'),
                                         read_only=True)
  saved = checkpoints.loop_state(2)
  checkpoints.close()
  assert saved['choices']['lrn'] is False and saved['choices']['dropout_rate'] == 0.5
  model = json.loads((tmp_path / 'baseline_seed1' / 'model.json').read_text())['config']
  assert model['seed'] == 1 and model['lrn'] is None
  assert claims.measure(config, str(tmp_path), [0, 1], ROWS) == first
  assert steps_saved(tmp_path / 'no_dropout') == [2]
