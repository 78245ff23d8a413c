"""The data path: sources -> the one-time 256x256 store -> grain loader -> device augmentation.

  image_folder.py, TFDS, synthetic.py   where images come from
  decode.py      encoded image -> the paper's square (shorter side to S, centre S x S)
  store.py       the store: ArrayRecord shards of S x S JPEG or raw pixels, written once
                 from a source by `python -m alexnet_jax.commands.prepare`
  loader.py      per-host batches (host_batch.py) of S x S uint8 images, shuffled, decoded by
                 worker processes, or of the JPEG bytes of the rows the devices decode
  to_devices.py  host batch -> the batch on the devices; gpu_decode.py decodes JPEGs there,
                 in_flight.py several batches at once, decode_share.py splits the rows
  augment.py     on the device, inside the jitted step: the paper's patches, reflections,
                 PCA lighting and mean subtraction

`--config.dataset` names what to train on:
  NAME           a store prepared in --config.data_dir (default ~/alexnet_jax_data), e.g.
                 imagenet2012; a PATH (with a '/') names a store anywhere
  image_folder:ROOT  a folder of images, decoded and resized as they are read (small sets;
                 larger ones read faster prepared into a store)
  synthetic      generated images, no download

Nothing here imports TensorFlow, and nothing the decoding processes load imports JAX:
to_devices.py and gpu_decode.py are imported by the trainer alone (gpu_decode.py is the only
importer of the optional GPU decoder).
"""

from etils import epath

from alexnet_jax.data import image_folder, image_source, loader, splits, store, synthetic
from alexnet_jax.data.loader import Data
from alexnet_jax.errors import DataError

DEFAULT_DATA_DIR = '~/alexnet_jax_data'


def store_path(dataset: str, data_dir: str | None) -> epath.Path:
  """Where the store that `dataset` names lives."""
  if '/' in dataset:
    return epath.Path(dataset).expanduser()
  return epath.Path(data_dir or DEFAULT_DATA_DIR).expanduser() / dataset


def prepare_command(dataset: str, data_dir: str | None, size: int) -> str:
  """The command that prepares the store `dataset` names."""
  path = store_path(dataset, data_dir)
  source = dataset if '/' not in dataset else 'SOURCE'
  command = f'python -m alexnet_jax.commands.prepare --source={source} --size={size} --out={path}'
  if source == 'imagenet2012':
    command += ' --manual_dir=DIR_WITH_THE_ILSVRC2012_TARS'
  return command


def create(config, global_batch_size: int, process_index: int = 0, process_count: int = 1,
           workers: int | None = None) -> Data:
  """The dataset `config.dataset` names; this host's share of its batches.

  `workers`: decoding processes (default: `config.data_workers`).
  """
  workers, threads = loader.auto_resources(
      config.data_workers if workers is None else workers, config.data_threads)
  reading = loader.Reading(process_index, process_count, workers=workers, threads=threads)
  train, evaluation, classes, class_names = open_splits(config)
  return loader.make_data(train, evaluation, name=config.dataset, num_classes=classes,
                          image_size=config.resize_size, global_batch=global_batch_size,
                          seed=config.seed, reading=reading, class_names=class_names,
                          skip_damaged=config.get('skip_damaged_records', False))


def open_splits(config) -> tuple[image_source.Split, image_source.Split, int, tuple[str, ...]]:
  """The training and validation splits `config.dataset` names, of `config.resize_size`
  squares, the class count and the class names (empty where the dataset names none)."""
  size = config.resize_size
  train_spec, eval_spec = splits.parse(config.train_split), splits.parse(config.eval_split)
  if config.dataset == 'synthetic':
    classes = config.synthetic.num_classes
    sources = {
        train_spec: synthetic.SyntheticSplit(synthetic.TRAIN, config.synthetic.train_examples,
                                             size, classes),
        eval_spec: synthetic.SyntheticSplit(synthetic.EVAL, config.synthetic.eval_examples,
                                            size, classes)}
    class_names = ()
  elif config.dataset.startswith(image_folder.PREFIX):
    folder = image_folder.open_folder(config.dataset[len(image_folder.PREFIX):],
                                      [train_spec.name, eval_spec.name],
                                      config.imagenet_wnid_labels)
    sources = {spec: image_folder.FolderSplit(*folder.splits[spec.name], size)
               for spec in (train_spec, eval_spec)}
    classes, class_names = len(folder.classes), folder.classes
  else:
    prepared = open_prepared(config.dataset, config.data_dir, size)
    for spec in (train_spec, eval_spec):
      if spec.name not in prepared.splits:
        raise DataError(f'The store {prepared.path} has no split {spec.name!r}; it has '
                        f'{prepared.split_names()}: set --config.train_split and '
                        '--config.eval_split to those.')
    sources = {spec: prepared.source_of(spec.name) for spec in (train_spec, eval_spec)}
    classes, class_names = len(prepared.classes), prepared.classes
  train, evaluation = (image_source.Split(sources[spec], *spec.bounds(len(sources[spec])))
                       for spec in (train_spec, eval_spec))
  return train, evaluation, classes, class_names


def open_prepared(dataset: str, data_dir: str | None, size: int) -> store.Store:
  """The complete store `dataset` names, of `size` x `size` images; DataError with the command
  that prepares it if there is none."""
  path = store_path(dataset, data_dir)
  if not store.is_complete(path):
    partly = ' (a preparation was started there and not finished)' if path.exists() else ''
    raise DataError(
        f'The dataset {dataset!r} is not prepared: {path} holds no store{partly}. Prepare it '
        f'once (it resumes where it stopped):\n  {prepare_command(dataset, data_dir, size)}\n'
        'To train without any download: --config=configs/alexnet.py:demo')
  prepared = store.open_store(path)
  if prepared.image_size != size:
    raise DataError(
        f'The store {path} holds {prepared.image_size}x{prepared.image_size} images and '
        f'--config.resize_size is {size}: set --config.resize_size={prepared.image_size}, or '
        f'prepare a store of {size}x{size} images with --size={size} and another --out.')
  return prepared
