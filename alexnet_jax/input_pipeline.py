"""Datasets as the training loop sees them: per-host batches of uint8 images and labels.

Three sources share one interface:
  - any TFDS image-classification dataset (`imagenet2012` by default), read
    through tf.data with the paper's preprocessing (`tfds_data.py`);
  - a folder of images laid out ROOT/<split>/<class>/<image>, named as
    `image_folder:ROOT`, through the same preprocessing (`image_folder.py`);
  - `synthetic`, a learnable image set generated in NumPy for the offline demo
    and for machines without TensorFlow (`synthetic_data.py`).

A train batch is {'image': uint8 [B, S, S, 3], 'label': int32 [B]} and, with
PCA lighting on, 'rgb_shift': float32 [B, 3], the colour shift to add to the
image (done on the device with the mean subtraction: see
`parallel.normalize_images`). An eval batch has 'mask': float32 [B] instead,
0 on the padding that fills the last batch.
"""

import dataclasses
from typing import Callable, Iterator

import jax

from alexnet_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Data:
  num_classes: int
  train_examples: int       # one epoch, all hosts together
  eval_examples: int        # the whole validation split, all hosts together
  eval_steps: int           # batches per evaluation pass, the same on every host
  # train_batches(start_step): this host's batches for steps start_step, start_step + 1, ...
  # They are a function of the seed and the step alone, so a resumed run sees
  # the batches the interrupted one would have seen.
  train_batches: Callable[[int], Iterator[dict]]
  # eval_batches(): one pass over this host's share of the validation split.
  eval_batches: Callable[[], Iterator[dict]]
  # Names of the classes by index where the source has them (TFDS label names,
  # folder names); empty otherwise.
  class_names: tuple[str, ...] = ()


def create(config, global_batch_size: int) -> Data:
  """The dataset that `config.dataset` names, split between this job's hosts."""
  process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise DataError(f'global batch {global_batch_size} does not split between '
                    f'{process_count} hosts.')
  host_batch = global_batch_size // process_count
  if config.dataset == 'synthetic':
    from alexnet_jax import synthetic_data
    return synthetic_data.create(config, host_batch, process_index, process_count)
  if config.dataset.startswith('image_folder:'):
    from alexnet_jax import image_folder
    return image_folder.create(config, host_batch, process_index, process_count)
  from alexnet_jax import tfds_data  # TensorFlow only where a TFDS dataset is used.
  return tfds_data.create(config, host_batch, process_index, process_count)
