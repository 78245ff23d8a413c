"""TFDS datasets through tf.data, with the paper's preprocessing (`preprocessing.py`).

Every random draw is stateless, keyed by (seed, host, epoch, example index),
and each epoch's shuffle has its own seed: the stream from any step on is a
function of the seed and that step.
"""

import itertools
import math

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline, preprocessing
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


def _epoch_seed(seed: int, process_index: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, process_index, epoch]).generate_state(1)[0])


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
  global_batch = host_batch * process_count
  steps_per_epoch = train_examples // global_batch
  if steps_per_epoch == 0:
    raise DataError(
        f'{config.dataset}:{train_split} has {train_examples} examples, fewer than one '
        f'global batch of {global_batch}: lower --config.global_batch_size.')
  # Hosts' shares differ by at most one example; all run as many steps as the largest.
  eval_steps = math.ceil(math.ceil(eval_examples / process_count) / host_batch)
  num_classes = builder.info.features['label'].num_classes
  options = tf.data.Options()
  options.deterministic = True  # exact resume needs the same order every time

  def epoch_batches(epoch: int, skip_steps: int):
    epoch_seed = _epoch_seed(config.seed, process_index, epoch)
    ds = _host_split(builder, train_split, process_index, process_count, shuffle_files=True,
                     read_config=tfds.ReadConfig(shuffle_seed=epoch_seed, options=options))
    ds = ds.enumerate().shuffle(config.shuffle_buffer, seed=epoch_seed)
    # Skip before decoding: resuming mid-epoch reads the skipped records but decodes none.
    ds = ds.take(steps_per_epoch * host_batch).skip(skip_steps * host_batch)
    base_seed = tf.constant([epoch_seed % 2**31, 0], tf.int64)

    def preprocess(index, example):
      seed = tf.random.experimental.stateless_fold_in(base_seed, index)
      return preprocessing.train_example(seed, example, config)

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()

  def train_batches(start_step: int):
    first_epoch, skip = divmod(start_step, steps_per_epoch)
    for epoch in itertools.count(first_epoch):
      yield from epoch_batches(epoch, skip if epoch == first_epoch else 0)

  def eval_batches():
    ds = _host_split(builder, eval_split, process_index, process_count)
    ds = ds.map(lambda ex: preprocessing.eval_example(ex, config), num_parallel_calls=tf.data.AUTOTUNE)
    size = config.image_size
    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros([size, size, 3], tf.uint8),
        'label': tf.constant(0, tf.int32),
        'mask': tf.constant(0.0, tf.float32)}).repeat()
    ds = ds.concatenate(padding).take(eval_steps * host_batch)
    return ds.batch(host_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  return input_pipeline.Data(
      num_classes=num_classes, train_examples=train_examples, eval_examples=eval_examples,
      eval_steps=eval_steps,
      train_batches=train_batches, eval_batches=eval_batches)
