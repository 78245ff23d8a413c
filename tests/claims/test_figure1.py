"""Figure 1's command: its net, its sweep and its reproducibility, on small images."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax.claims import figure1, four_layer_net
from alexnet_jax.commands import figure1 as figure1_command
from tests.conftest import write_image_folder

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_four_layer_net_is_three_5x5_convolutions_and_one_fully_connected_layer():
  params = jax.eval_shape(lambda: four_layer_net.FourLayerNet(10).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))))['params']
  assert {name: p['kernel'].shape for name, p in params.items()} == {
      'conv1': (5, 5, 3, 32), 'conv2': (5, 5, 32, 32), 'conv3': (5, 5, 32, 64),
      'fc': (4 * 4 * 64, 10)}


@pytest.mark.parametrize('units', ['relu', 'tanh'])
def test_the_four_layer_net_computes_what_tensorflows_ops_do(units):
  """Each convolution, its units and its pool (3x3, stride 2, 'SAME': 32 -> 16 -> 8 -> 4),
  then the fully connected layer, rebuilt from TensorFlow's ops with the same parameters."""
  images = np.asarray(jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
  net = four_layer_net.FourLayerNet(10, units)
  params = jax.device_get(net.init(jax.random.key(0), images)['params'])
  activation = {'relu': tf.nn.relu, 'tanh': tf.tanh}[units]
  x = tf.constant(images)
  for name in ('conv1', 'conv2', 'conv3'):
    x = activation(tf.nn.conv2d(x, params[name]['kernel'], 1, 'SAME') + params[name]['bias'])
    x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
  logits = tf.reshape(x, (2, -1)) @ params['fc']['kernel'] + params['fc']['bias']
  np.testing.assert_allclose(np.asarray(net.apply({'params': params}, images)), logits.numpy(),
                             rtol=1e-4, atol=1e-5)


def test_an_epochs_error_counts_its_full_batches_as_trained_on():
  """At rate 0 the parameters stay put: an epoch's error is then the initial net's on the rows
  of the epoch's full batches (50 images, batches of 16: 48 rows, the last 2 left out)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 50).astype(np.int32)
  settings = figure1.Settings(batch_size=16, seed=3)
  net = figure1._Net('relu', images, labels, 3, settings)
  state = net.init(0.0)
  _, error = net.epoch(state, epoch=1)
  rows = np.random.default_rng([3, 1]).permutation(50)[:48]
  x = (images[rows].astype(np.float32) - net.mean) / net.std
  predicted = np.asarray(net.model.apply({'params': state[0]}, x)).argmax(-1)
  assert error == pytest.approx(np.mean(predicted != labels[rows]))


def test_epochs_to_the_threshold_and_the_summary_line():
  result = figure1.Result(sweep={}, chosen={'relu': 0.01, 'tanh': 0.01},
                          curves={'relu': [0.6, 0.3, 0.25, 0.1], 'tanh': [0.7, 0.5, 0.4, 0.3]})
  assert result.epochs_to(0.25) == {'relu': 3, 'tanh': None}
  assert figure1.summary(result, 0.25) == (
      'relu reached 25% training error at epoch 3; tanh did not reach 25% training error in '
      '4 epochs.')
  result.curves['tanh'][-1] = 0.2
  assert figure1.summary(result, 0.25).endswith(
      'tanh took 1.3 times as many epochs as ReLU (the paper: six times).')


def test_the_command_writes_the_figure_and_its_curves_again_from_the_same_seed(tmp_path):
  """The command on a folder, then the same sweep in this process: the same curves, so each
  is a function of the seed alone; the rate that went on is the sweep's lowest error."""
  folder = write_image_folder(tmp_path / 'images', train=50, val=2)
  out = tmp_path / 'figure'
  done = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.figure1',
       f'--dataset=image_folder:{folder}', f'--out={out}', '--epochs=3', '--sweep_epochs=2',
       '--rates=0.003,0.01'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  assert lines[0] == '150 training images of 32x32, 3 classes.'
  record = json.loads((out / 'figure1.json').read_text())
  assert record['examples'] == 150
  result = figure1.Result(sweep={}, chosen=record['chosen'], curves=record['curves'])
  assert lines[-1] == figure1.summary(result, 0.25)
  with Image.open(out / 'figure1.png') as png:
    assert png.size == (600, 450)

  images, labels, classes = figure1_command.read_training_images(
      f'image_folder:{folder}', None, 32)
  settings = figure1.Settings(epochs=3, sweep_epochs=2, rates=(0.003, 0.01))
  again = figure1.run(images, labels, classes, settings, log=lambda line: None)
  assert again.curves == record['curves'] and again.chosen == record['chosen']
  for name in figure1.ACTIVATIONS:
    sweep = again.sweep[name]
    assert {str(r): e for r, e in sweep.items()} == record['sweep'][name]
    assert again.chosen[name] == min(sweep, key=lambda r: (sweep[r][-1], r))
    assert again.curves[name][:2] == sweep[again.chosen[name]]
    assert len(again.curves[name]) == 3 and all(0 <= e <= 1 for e in again.curves[name])


def test_a_sweep_longer_than_the_run_is_refused(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.figure1', '--dataset=nowhere',
       f'--out={tmp_path}', '--epochs=2', '--sweep_epochs=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  assert '--sweep_epochs=3 must be from 1 to --epochs=2' in done.stderr
  assert not any(tmp_path.iterdir())
