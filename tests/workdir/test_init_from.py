"""--config.init_from: a run starts from another workdir's layers (trained here or imported),
fc8 and the named layers afresh, the optimiser state and step afresh; what cannot be taken
is named."""

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config_checks, errors, train
from alexnet_jax.commands import weights
from alexnet_jax.workdir import init_from, model_record, trained
from configs import alexnet
from tests.conftest import run_config, saved_state

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'owt_narrow.pth'   # 1/64 width, 10 classes


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A tiny model trained 2 steps on the demo's 10 generated classes."""
  workdir = str(tmp_path_factory.mktemp('source'))
  train.train_and_evaluate(run_config(2), workdir)
  return workdir


def _fresh_params(config, num_classes, image_size=64):
  """Parameters of this run's shapes (a stand-in for its initialisation), on a device."""
  model = train.create_model(config, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(7), jnp.zeros(
      (1, image_size, image_size, 3)), train=False))['params']
  rng = np.random.default_rng(7)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def _assert_equal_layers(a, b, layers):
  for layer in layers:
    for kind in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(a[layer][kind]), np.asarray(b[layer][kind]),
                                    err_msg=f'{layer}/{kind}')


def test_layers_come_from_the_source_and_fc8_afresh_when_the_classes_differ(source, caplog):
  caplog.set_level(logging.INFO)
  config = run_config(2, init_from=source)
  config.synthetic.num_classes = 5
  fresh = _fresh_params(config, 5)
  started = init_from.initial_params(config, fresh)
  source_params = _best_params(source)   # it keeps a best checkpoint: that one is taken
  _assert_equal_layers(started, source_params, ['conv1', 'conv2', 'conv3', 'conv4', 'conv5',
                                                'fc6', 'fc7'])
  _assert_equal_layers(started, fresh, ['fc8'])
  assert 'fc8 starts afresh: 10 classes in' in caplog.text
  config.reinit_layers = 'fc7, conv1'
  again = init_from.initial_params(config, fresh)
  _assert_equal_layers(again, fresh, ['conv1', 'fc7', 'fc8'])
  _assert_equal_layers(again, source_params, ['conv2', 'fc6'])


def _best_params(workdir):
  import orbax.checkpoint as ocp
  best = pathlib.Path(workdir, 'checkpoints', str(trained.best_step(workdir)))
  return ocp.PyTreeCheckpointer().restore(str(best / 'state'))['params']


def test_a_fine_tuning_run_trains_on_with_a_fresh_optimiser_and_step(source, tmp_path):
  config = run_config(1, init_from=source)
  config.synthetic.num_classes = 5
  workdir = str(tmp_path / 'tuned')
  train.train_and_evaluate(config, workdir)
  tuned, trained = saved_state(workdir, 1), saved_state(source, 2)
  assert int(tuned['step']) == 1 and int(tuned['opt_state']['count']) == 1   # not 2 + 1
  # One step away from the source's parameters, not from a fresh initialisation's.
  moved = np.abs(tuned['params']['conv1']['kernel'] - _best_params(source)['conv1']['kernel'])
  # conv1's fresh initialisation (PyTorch's) is uniform within 1/sqrt(fan_in), 0.052: a run
  # started afresh would lie that far from the source, this one a tenth of it at most.
  assert moved.max() < 0.1 / np.sqrt(11 * 11 * 3) and moved.max() > 0
  assert trained['params']['fc8']['kernel'].shape[-1] == 10
  assert tuned['params']['fc8']['kernel'].shape[-1] == 5
  record = model_record.read(workdir)   # what the run wrote for the commands that read it
  assert record.config.init_from == source and record.class_names == ()


def test_an_imported_workdir_starts_a_run_and_other_inputs_are_warned_of(tmp_path, caplog):
  imported = str(tmp_path / 'imported')
  weights.import_weights(str(FIXTURE), imported, alexnet.get_config('torchvision'))
  config = alexnet.get_config('owt')   # the paper's mean pixel, not torchvision's
  config.width, config.init_from = 1 / 64, imported
  fresh = _fresh_params(config, 3, image_size=224)
  started = init_from.initial_params(config, fresh)
  _assert_equal_layers(started, saved_state(imported, 0)['params'], ['conv1', 'fc6', 'fc7'])
  _assert_equal_layers(started, fresh, ['fc8'])
  assert 'was trained on inputs of mean_rgb=[123.675, 116.28, 103.53]' in caplog.text


def test_another_network_is_named_with_the_layers_that_differ(source):
  config = run_config(2, init_from=source, width=0.25)
  with pytest.raises(errors.ConfigError, match=r'holds another network than this run builds '
                     r'\(conv1: .*\(11, 11, 3, 8\).* there, .*\(11, 11, 3, 16\).* here'):
    init_from.initial_params(config, _fresh_params(config, 10))


def test_what_cannot_be_read_is_refused_at_start_up(tmp_path):
  with pytest.raises(errors.ConfigError, match='does not exist'):
    init_from.check(run_config(2, init_from=str(tmp_path / 'absent')))
  with pytest.raises(errors.ConfigError, match='fc9 is no layer of AlexNet'):
    config_checks.check(run_config(2, init_from=str(tmp_path), reinit_layers='fc8,fc9'), 2)
  with pytest.raises(errors.ConfigError, match='reinit_layers is set but --config.init_from'):
    config_checks.check(run_config(2, reinit_layers='fc8'), 2)
