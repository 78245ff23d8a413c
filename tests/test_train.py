"""train_and_evaluate end to end: a prepared store, the demo, resume, and the errors users see."""

import glob
import logging
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import errors, train
from alexnet_jax.data import prepare
from configs import alexnet
from tests.conftest import assert_same_tree, saved_state, tiny_config, write_image_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def store_config(tmp_path_factory):
  """The paper's model, narrow, on a store of 21 training and 9 validation images."""
  folder = write_image_folder(tmp_path_factory.mktemp('images'))
  out = tmp_path_factory.mktemp('data') / 'images_73'
  prepare.prepare(f'image_folder:{folder}', str(out),
                  prepare.Options(size=73, images_per_shard=8, workers=0), progress=False)

  def config(num_train_steps):
    config = tiny_config('paper')
    config.dataset = str(out)
    config.global_batch_size = 4
    config.num_train_steps = num_train_steps
    config.eval_every_steps = 2
    return config

  return config


def test_a_store_trains_evaluates_saves_and_resumes(store_config, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  metrics = train.train_and_evaluate(store_config(7), straight)
  # Stopped at an evaluation (a run that ends evaluates, which would count in the plateau
  # schedule), then continued across an epoch's end (5 steps).
  train.train_and_evaluate(store_config(4), interrupted)
  assert sorted(os.listdir(os.path.join(interrupted, 'checkpoints'))) == ['2', '4']
  train.train_and_evaluate(store_config(7), interrupted)
  assert 'Restored the checkpoint of step 4' in caplog.text
  assert 'training from step 4 to 7' in caplog.text

  assert metrics['examples'] == 9 and 0 <= metrics['top1_error'] <= 1
  assert glob.glob(os.path.join(straight, 'events.out.tfevents.*'))
  # The second call continued from step 4 (not from 0), over the same batches
  # and dropout masks as the straight run: the parameters agree exactly.
  a, b = saved_state(straight, 7), saved_state(interrupted, 7)
  assert int(a['step']) == int(b['step']) == 7
  assert_same_tree(a['params'], b['params'])
  assert_same_tree(a['opt_state'], b['opt_state'])


def test_a_cosine_schedule_sets_each_steps_rate_and_a_resumed_run_continues_it(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  config = tiny_config()
  config.lr_schedule, config.learning_rate = 'cosine', 0.01
  config.num_train_steps, config.eval_every_steps, config.keep_checkpoints = 7, 2, 10
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  train.train_and_evaluate(config, str(straight))

  def rate(step):   # the rate step `step` (from 1) trains with: 0.01 at the first, then down
    return 0.5 * 0.01 * (1 + math.cos(math.pi * (step - 1) / 7))

  logged = {int(step): float(lr) for step, lr in re.findall(
      r'\[(\d+)\] train/.*train/learning_rate=([\d.e-]+)', caplog.text)}
  assert sorted(logged) == [2, 4, 6, 7]
  for step in (2, 4, 6, 7):
    assert logged[step] == pytest.approx(rate(step), rel=1e-5)
    saved = saved_state(str(straight), step)['opt_state']['hyperparams']['learning_rate']
    assert float(saved) == pytest.approx(rate(step), rel=1e-6)
  # The run stopped after step 4 and started again: it continues the same schedule.
  shutil.copytree(straight / 'checkpoints' / '4', resumed / 'checkpoints' / '4')
  train.train_and_evaluate(config, str(resumed))
  assert 'training from step 4 to 7' in caplog.text
  a, b = saved_state(str(straight), 7), saved_state(str(resumed), 7)
  assert_same_tree(a['params'], b['params'])
  assert_same_tree(a['opt_state'], b['opt_state'])


@pytest.mark.slow   # the demo's config end to end; the README measures its whole run
def test_demo_config_runs(tmp_path):
  config = alexnet.get_config('demo')
  config.num_train_steps = 10
  config.eval_every_steps = 10
  config.synthetic.eval_examples = 100
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics['examples'] == 100
  assert np.isfinite(metrics['loss'])
  assert os.listdir(os.path.join(tmp_path, 'checkpoints')) == ['10']


def test_durations_in_epochs_at_the_papers_numbers():
  """ImageNet's 1,281,167 training images at batch 128: 10,009 steps an epoch, 90 epochs."""
  steps_per_epoch = 1_281_167 // 128   # 10,009, as data.create counts it (tests/data/test_loader.py)
  assert train._steps(-1, 90.0, steps_per_epoch) == 900_810
  assert train._steps(-1, 1.0, steps_per_epoch) == 10_009        # evaluate every epoch
  assert train._steps(-1, 0.5, steps_per_epoch) == 5_005         # a part epoch, rounded up
  assert train._steps(1_000, 90.0, steps_per_epoch) == 1_000     # steps, when given, win


def test_batch_that_does_not_split_between_devices_is_refused(tmp_path):
  config = tiny_config()
  config.global_batch_size = 7
  with pytest.raises(errors.ConfigError, match='global_batch_size=7'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_main_without_imagenet_prints_how_to_prepare_it(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/alexnet.py',
       f'--workdir={tmp_path / "work"}', f'--config.data_dir={tmp_path / "data"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert ('python -m alexnet_jax.commands.prepare --source=imagenet2012 --size=256 '
          f'--out={tmp_path / "data" / "imagenet2012"} --manual_dir=') in result.stderr
  assert 'Traceback' not in result.stderr
