"""TFDS datasets, batched by `tf_batches.py` with the paper's preprocessing."""

import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import tf_batches
from alexnet_jax.errors import DataError


def _not_prepared_message(name: str, data_dir) -> str:
  where = data_dir or '~/tensorflow_datasets (or $TFDS_DATA_DIR)'
  message = (f'TFDS dataset {name!r} is not prepared in {where}.\n')
  if name.startswith('imagenet2012'):
    message += (
        'ImageNet must be downloaded by hand: register at https://image-net.org, download\n'
        '  ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar\n'
        'into ~/tensorflow_datasets/downloads/manual/, then run once\n'
        f'  tfds build imagenet2012 --data_dir={data_dir or "~/tensorflow_datasets"}\n'
        'and pass --config.data_dir to the same folder if it is not the default.\n')
  else:
    message += f'Prepare it with: tfds build {name}' + (f' --data_dir={data_dir}' if data_dir else '') + '\n'
  message += 'To try the trainer without any download: --config=configs/alexnet.py:demo'
  return message


def _host_split(builder, split: str, process_index: int, process_count: int, **kwargs):
  host_split = tfds.even_splits(split, n=process_count)[process_index]
  try:
    return builder.as_dataset(split=host_split, decoders={'image': tfds.decode.SkipDecoding()},
                              **kwargs)
  except AssertionError as e:  # TFDS's way of saying the files are not there.
    raise DataError(_not_prepared_message(builder.name, builder.data_dir)) from e


def _num_examples(builder, split: str, host_ds, process_count: int) -> int:
  if split in builder.info.splits:
    return builder.info.splits[split].num_examples
  # Datasets without metadata (e.g. tfds.testing.mock_data): count this host's share.
  host_count = int(host_ds.cardinality())
  if host_count < 0:
    host_count = sum(1 for _ in host_ds)
  return host_count * process_count


def create(config, host_batch: int, process_index: int, process_count: int):
  try:
    builder = tfds.builder(config.dataset, data_dir=config.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
        f'No TFDS dataset is called {config.dataset!r}: set --config.dataset to a TFDS '
        'image-classification dataset (e.g. imagenet2012) or to synthetic.') from e
  train_split, eval_split = config.train_split, config.eval_split
  probe = _host_split(builder, train_split, process_index, process_count)
  train_examples = _num_examples(builder, train_split, probe, process_count)
  eval_probe = _host_split(builder, eval_split, process_index, process_count)
  eval_examples = _num_examples(builder, eval_split, eval_probe, process_count)
  num_classes = builder.info.features['label'].num_classes
  options = tf.data.Options()
  options.deterministic = True  # exact resume needs the same order every time

  def read(split: str, shuffle_seed: int | None):
    if shuffle_seed is None:
      return _host_split(builder, split, process_index, process_count)
    return _host_split(builder, split, process_index, process_count, shuffle_files=True,
                       read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options))

  return tf_batches.make_data(
      read, config, name=config.dataset, num_classes=num_classes, train_examples=train_examples,
      eval_examples=eval_examples, host_batch=host_batch, process_index=process_index,
      process_count=process_count, class_names=builder.info.features['label'].names)
