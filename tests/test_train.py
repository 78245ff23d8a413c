"""train_and_evaluate end to end: mock ImageNet, the demo, resume, and the errors users see."""

import glob
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import errors, train
from configs import alexnet
from tests.conftest import saved_state, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mock_imagenet_config(num_train_steps):
  config = tiny_config('paper')
  config.dataset = 'imagenet2012'
  config.global_batch_size = 4
  config.num_train_steps = num_train_steps
  config.eval_every_steps = 2
  return config




def test_mock_imagenet_trains_evaluates_saves_and_resumes(tmp_path):
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  with tfds.testing.mock_data(num_examples=9):
    metrics = train.train_and_evaluate(_mock_imagenet_config(5), straight)
    train.train_and_evaluate(_mock_imagenet_config(3), interrupted)
    assert sorted(os.listdir(os.path.join(interrupted, 'checkpoints'))) == ['2', '3']
    train.train_and_evaluate(_mock_imagenet_config(5), interrupted)

  assert metrics['examples'] == 9 and 0 <= metrics['top1_error'] <= 1
  assert glob.glob(os.path.join(straight, 'events.out.tfevents.*'))
  # The second call continued from step 3 (not from 0), over the same batches
  # and dropout masks as the straight run: the parameters agree exactly.
  a, b = saved_state(straight, 5), saved_state(interrupted, 5)
  assert int(a['step']) == int(b['step']) == 5
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(a['opt_state']), jax.tree.leaves(b['opt_state'])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_demo_config_runs(tmp_path):
  config = alexnet.get_config('demo')
  config.num_train_steps = 10
  config.eval_every_steps = 10
  config.synthetic.eval_examples = 100
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics['examples'] == 100
  assert np.isfinite(metrics['loss'])
  assert os.listdir(os.path.join(tmp_path, 'checkpoints')) == ['10']


def test_batch_that_does_not_split_between_devices_is_refused(tmp_path):
  config = tiny_config()
  config.global_batch_size = 7
  with pytest.raises(errors.ConfigError, match='global_batch_size=7'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_main_without_imagenet_prints_how_to_prepare_it(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TFDS_DATA_DIR': str(tmp_path / 'tfds')}
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/alexnet.py',
       f'--workdir={tmp_path / "work"}', f'--config.data_dir={tmp_path / "tfds"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'tfds build imagenet2012' in result.stderr
  assert 'Traceback' not in result.stderr
