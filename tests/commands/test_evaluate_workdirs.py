"""Evaluating trained workdirs without training: latest, best, a step, and ensembles."""

import pathlib
import subprocess
import sys

import pytest

from alexnet_jax import errors, train
from alexnet_jax.commands.evaluate_workdirs import evaluate_workdirs
from tests.conftest import process_env, run_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(seed):
  return run_config(4, seed=seed)


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  runs = {}
  for seed in (0, 1):
    workdir = str(tmp_path_factory.mktemp(f'seed{seed}'))
    runs[workdir] = train.train_and_evaluate(_config(seed), workdir)
  return runs


def test_latest_checkpoint_gives_the_errors_of_the_runs_last_evaluation(workdirs):
  results = evaluate_workdirs(_config(0), list(workdirs), 'latest')
  for workdir, at_the_end in workdirs.items():
    assert results[workdir]['step'] == 4
    assert results[workdir]['top1_error'] == at_the_end['top1_error']
    assert results[workdir]['loss'] == pytest.approx(at_the_end['loss'], rel=1e-5)
  ensemble = results['ensemble']
  assert ensemble['examples'] == 13 and 0 <= ensemble['top1_error'] <= 1


def test_a_chosen_step_and_the_best_checkpoint(workdirs):
  workdir = list(workdirs)[0]
  assert evaluate_workdirs(_config(0), [workdir], '2')[workdir]['step'] == 2
  best = evaluate_workdirs(_config(0), [workdir], 'best')
  assert best[workdir]['step'] in (2, 4) and 'ensemble' not in best


def test_a_missing_checkpoint_is_named(workdirs, tmp_path):
  with pytest.raises(errors.ConfigError, match='no checkpoint of step 3'):
    evaluate_workdirs(_config(0), list(workdirs)[:1], '3')
  with pytest.raises(errors.ConfigError, match='holds no checkpoint'):
    evaluate_workdirs(_config(0), [str(tmp_path / 'empty')], 'latest')


def test_command_prints_each_model_and_the_ensemble(workdirs):
  tiny = dict(width=0.125, image_size=64, resize_size=73, global_batch_size=8,
              **{'synthetic.train_examples': 64, 'synthetic.eval_examples': 13})
  env = process_env()
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.evaluate_workdirs', '--config=configs/alexnet.py:demo',
       f'--workdirs={",".join(workdirs)}', *[f'--config.{k}={v}' for k, v in tiny.items()]],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| ')]
  assert len(rows) == 1 + len(workdirs) + 1 and rows[-1].startswith('| ensemble | - |')
  for workdir, at_the_end in workdirs.items():
    assert f'| {workdir} | 4 | {at_the_end["top1_error"]:.4f} |' in result.stdout
