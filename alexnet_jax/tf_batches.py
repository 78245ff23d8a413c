"""Per-host train and eval batches from a tf.data source of encoded images, shared by
the TFDS and image-folder datasets.

Every random draw is stateless, keyed by (seed, host, epoch, example index),
and each epoch's shuffle has its own seed: the stream from any step on is a
function of the seed and that step. Eval passes (centre patch, or ten patches
with `config.eval_ten_crop`) are padded to the same number of batches on every
host, the padding masked out.
"""

import itertools
import math
from typing import Callable

import numpy as np
import tensorflow as tf

from alexnet_jax import input_pipeline, preprocessing
from alexnet_jax.errors import DataError

# read(split, shuffle_seed) -> this host's examples {'image': encoded bytes, 'label': int}
# of `split`, their order shuffled by `shuffle_seed` where the source can (None: file order).
Reader = Callable[[str, int | None], tf.data.Dataset]


def epoch_seed(seed: int, process_index: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, process_index, epoch]).generate_state(1)[0])


def make_data(read: Reader, config, *, name: str, num_classes: int, train_examples: int,
              eval_examples: int, host_batch: int, process_index: int, process_count: int,
              class_names=()) -> input_pipeline.Data:
  global_batch = host_batch * process_count
  steps_per_epoch = train_examples // global_batch
  if steps_per_epoch == 0:
    raise DataError(
        f'{name}:{config.train_split} has {train_examples} examples, fewer than one '
        f'global batch of {global_batch}: lower --config.global_batch_size.')
  # Hosts' shares differ by at most one example; all run as many steps as the largest.
  eval_steps = math.ceil(math.ceil(eval_examples / process_count) / host_batch)

  def epoch_batches(epoch: int, skip_steps: int):
    seed = epoch_seed(config.seed, process_index, epoch)
    ds = read(config.train_split, seed).enumerate().shuffle(config.shuffle_buffer, seed=seed)
    # Skip before decoding: resuming mid-epoch reads the skipped records but decodes none.
    ds = ds.take(steps_per_epoch * host_batch).skip(skip_steps * host_batch)
    base_seed = tf.constant([seed % 2**31, 0], tf.int64)

    def preprocess(index, example):
      example_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
      return preprocessing.train_example(example_seed, example, config)

    # A file that passed the source's checks yet fails to decode is dropped with
    # tf.data's warning rather than ending the run (the epoch is then one short).
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
    ds = ds.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()

  def train_batches(start_step: int):
    first_epoch, skip = divmod(start_step, steps_per_epoch)
    for epoch in itertools.count(first_epoch):
      yield from epoch_batches(epoch, skip if epoch == first_epoch else 0)

  def eval_batches():
    ds = read(config.eval_split, None)
    example = preprocessing.ten_crop_example if config.eval_ten_crop else preprocessing.eval_example
    ds = ds.map(lambda ex: example(ex, config),
                num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros(ds.element_spec['image'].shape, tf.uint8),
        'label': tf.constant(0, tf.int32),
        'mask': tf.constant(0.0, tf.float32)}).repeat()
    ds = ds.concatenate(padding).take(eval_steps * host_batch)
    return ds.batch(host_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  return input_pipeline.Data(
      num_classes=num_classes, train_examples=train_examples, eval_examples=eval_examples,
      eval_steps=eval_steps, train_batches=train_batches, eval_batches=eval_batches,
      class_names=tuple(class_names))
