"""The start-up checks: every wrong field named with its fix, before anything is read."""

import pytest

from alexnet_jax import config_checks, errors
from tests.conftest import NUM_DEVICES, plateau_config


@pytest.mark.parametrize('field, value', [
    ('model', 'vgg'), ('global_batch_size', 3), ('image_size', 0), ('width', -1.0),
    ('model_axis_size', 3), ('lr_schedule', 'step'), ('momentum', float('nan')),
    ('weight_decay', float('nan')), ('weight_decay', -5e-4), ('learning_rate', float('inf')),
    ('std_rgb', (0.0, 0.0, 0.0)), ('color_stats', 'imagenet'), ('subtract_mean', 'median'),
    ('decode', 'gpu'), ('decode_in_flight', 0),
    ('reinit_layers', 'fc9')])
def test_bad_fields_are_named(field, value):
  config = plateau_config(2)
  config[field] = value
  with pytest.raises(errors.ConfigError, match=f'--config.{field}='):
    config_checks.check(config, NUM_DEVICES)


def test_every_wrong_field_is_named_at_once():
  config = plateau_config(2, width=-1.0, dropout_rate=1.0, keep_checkpoints=0)
  with pytest.raises(errors.ConfigError) as raised:
    config_checks.check(config, NUM_DEVICES)
  lines = str(raised.value).splitlines()
  assert lines[0] == 'Invalid config:' and len(lines) == 4
  assert [line.split('=')[0].strip() for line in lines[1:]] == [
      '--config.width', '--config.dropout_rate', '--config.keep_checkpoints']


def test_the_mean_image_needs_the_computed_statistics():
  config = plateau_config(2, subtract_mean='image')
  with pytest.raises(errors.ConfigError, match='python -m alexnet_jax.commands.color_stats'):
    config_checks.check(config, NUM_DEVICES)
  config.color_stats = 'computed'
  config_checks.check(config, NUM_DEVICES)


def test_a_patch_one_pixel_under_the_smallest_is_refused_with_the_way_out():
  config = plateau_config(1, image_size=63, resize_size=63)
  config_checks.check(config, NUM_DEVICES)
  config.image_size = 62
  with pytest.raises(errors.ConfigError) as raised:
    config_checks.check(config, NUM_DEVICES)
  assert ('--config.image_size=62 is too small: the maps vanish at pool after conv5' in
          str(raised.value))
  assert 'at least 63x63' in str(raised.value) and '--config.resize_size=' in str(raised.value)


def test_model_splits_the_network_cannot_take_are_named():
  config = plateau_config(2)
  config.model, config.model_axis_size = 'paper', 4
  with pytest.raises(errors.ConfigError, match='model_axis_size=4: the paper model splits over 2'):
    config_checks.check(config, num_devices=8)
  config.model, config.width, config.model_axis_size = 'owt', 0.5, 3   # 2048 hidden units
  with pytest.raises(errors.ConfigError, match='model_axis_size=3 does not divide the 2048 units'):
    config_checks.check(config, num_devices=6)
  config.model_axis_size = 2
  with pytest.raises(errors.ConfigError, match='must divide the 1 devices of each host'):
    config_checks.check(config, num_devices=2, num_local_devices=1)
  config.model_axis_size = 4
  with pytest.raises(errors.ConfigError, match="does not divide the dataset's 10 classes"):
    config_checks.check_classes(config, 10)


def test_unknown_variant_of_the_config_file_is_named():
  from configs import alexnet
  with pytest.raises(ValueError, match='paper, owt, demo, imagenette, claims or torchvision'):
    alexnet.get_config('resnet')
