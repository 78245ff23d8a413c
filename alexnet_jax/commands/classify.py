"""Classify images with a trained or imported workdir: each image's most probable classes.

  python -m alexnet_jax.commands.classify --workdir=/ckpt/torchvision photo.jpg holidays/ gs://b/x.png
  python -m alexnet_jax.commands.classify --workdir=/ckpt/run --ten_patches --json --checkpoint=best IMAGE...

Each image (a file, every image under a folder, local or gs://) becomes the paper's input
as training and evaluation make it: shorter side to the config's resize_size, the centre
square, then its centre patch, or with --ten_patches the paper's ten patches with their
softmax averaged. The workdir's model.json says the model, its input and its classes
(ImageNet wnids shown by their WordNet words); a workdir trained before model.json was
written needs --config. Images are read as `prepare` reads them (`data/image_files.py`):
regular files only, each folder walked once, within --max_image_bytes and
--max_image_pixels. An image that cannot be read or decoded is named on stderr, the
others are still classified, and the command exits with status 1.
"""

import dataclasses
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath

from alexnet_jax import command_line, errors, train
from alexnet_jax.data import augment, decode, image_files
from alexnet_jax.interop import class_names
from alexnet_jax.parallel import distributed
from alexnet_jax.workdir import color_stats, model_record, orbax_logs, trained


@dataclasses.dataclass(frozen=True)
class Classifier:
  config: object
  predict: object          # (uint8 [B, S, S, 3], ten_patches) -> probabilities [B, classes]
  class_names: tuple       # each class's own name (wnid, folder name), '' where it has none
  display_names: list      # what is printed for each class
  step: int


def load(workdir: str, which: str = 'latest', config=None) -> Classifier:
  """The model of checkpoint `which` of `workdir`, with the config and classes model.json
  records (or `config`, for a workdir that has none)."""
  distributed.one_host_only('python -m alexnet_jax.commands.classify')
  record = model_record.read(workdir)
  if config is None:
    if record is None:
      raise errors.ConfigError(
          f'{workdir} has no {model_record.FILENAME} (a workdir trained before it was written): '
          'pass the config it was trained with, e.g. --config=configs/alexnet.py:owt and the '
          'overrides it used.')
    config = record.config
  params, step = trained.restore_saved_params(workdir, which)
  num_classes = int(params['fc8']['bias'].shape[0])
  model = train.create_model(config, num_classes)
  aug = color_stats.augmentation(config, workdir)
  own = record.class_names if record is not None else ()
  if len(own) != num_classes:   # unnamed (synthetic data), or a model of ImageNet-1k
    own = (class_names.imagenet_wnids() if num_classes == class_names.IMAGENET_CLASSES else
           [''] * num_classes)
  params = jax.device_put(params)

  @functools.partial(jax.jit, static_argnums=1)
  def probabilities(images, ten_patches: bool):
    patches = augment.eval_images(aug, images, ten_patches)
    crops = patches.shape[1] if ten_patches else 1
    logits = model.apply({'params': params}, patches.reshape(-1, *patches.shape[-3:]),
                         train=False)
    return jax.nn.softmax(logits).reshape(len(images), crops, num_classes).mean(axis=1)

  return Classifier(config, probabilities, tuple(own),
                    class_names.display_names([name or f'class {i}' for i, name in enumerate(own)],
                                              num_classes), step)


def image_paths(arguments: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(the images `arguments` name, in order: files as given, each folder's images sorted),
  and (argument, why not) for those that name nothing readable."""
  paths, missing = [], []
  for argument in arguments:
    path = epath.Path(argument)
    if path.is_dir():
      found = image_files.images_under(argument)
      if found:
        paths += found
      else:
        missing.append((argument, f'a folder with no {", ".join(image_files.SUFFIXES)} files'))
    elif path.exists():
      paths.append(argument)
    else:
      missing.append((argument, 'no such file or folder'))
  return paths, missing


def classify(classifier: Classifier, paths: list[str], top: int = 5, ten_patches: bool = False,
             batch_size: int = 32, limits: image_files.Limits = image_files.Limits()
             ) -> tuple[list[dict], list[tuple[str, str]]]:
  """([{'image', 'top': [{'index', 'class', 'name', 'probability'}, ...]}], [(image, why
  it could not be classified)]); every image readable within `limits` is classified."""
  size = classifier.config.resize_size
  batch_size = max(1, min(batch_size, len(paths)))   # one shape, one compile
  results, failures = [], []
  for start in range(0, len(paths), batch_size):   # a batch decoded at a time: any folder fits
    chunk = []
    for path in paths[start:start + batch_size]:
      try:
        chunk.append((path, decode.square(image_files.read(path, limits), size,
                                          limits.max_pixels)))
      except (OSError, decode.UndecodableImage) as e:
        failures.append((path, f'cannot be decoded ({e})' if isinstance(
            e, decode.UndecodableImage) else f'cannot be read ({e})'))
    if not chunk:
      continue
    images = np.zeros((batch_size, size, size, 3), np.uint8)
    images[:len(chunk)] = [image for _, image in chunk]
    probabilities = np.asarray(classifier.predict(jnp.asarray(images), ten_patches))
    for (path, _), probs in zip(chunk, probabilities):
      best = np.argsort(-probs, kind='stable')[:top]
      results.append({'image': path, 'top': [
          {'index': int(c), 'class': classifier.class_names[c],
           'name': classifier.display_names[c], 'probability': float(probs[c])} for c in best]})
  return results, failures


def main(argv):
  FLAGS = flags.FLAGS
  if len(argv) < 2:
    sys.exit('usage: python -m alexnet_jax.commands.classify --workdir=DIR [--ten_patches] [--json] '
             'IMAGE_OR_FOLDER...')
  orbax_logs.keep_errors()
  try:
    classifier = load(FLAGS.workdir, FLAGS.checkpoint, FLAGS.config)
    paths, failures = image_paths(argv[1:])
    results, undecodable = classify(
        classifier, paths, FLAGS.top, FLAGS.ten_patches,
        limits=image_files.Limits(FLAGS.max_image_bytes, FLAGS.max_image_pixels))
  except errors.UserFacingError as e:
    sys.exit(f'error: {e}')
  failures += undecodable
  if FLAGS.json:
    print(json.dumps({'workdir': FLAGS.workdir, 'step': classifier.step,
                      'patches': 10 if FLAGS.ten_patches else 1, 'images': results,
                      'errors': [{'image': p, 'error': why} for p, why in failures]}, indent=1))
  else:
    for result in results:
      print(result['image'])
      for entry in result['top']:
        print(f'  {entry["probability"]:7.2%}  {entry["name"]}')
  for path, why in failures:
    print(f'error: {path} {why}; the other images were classified.', file=sys.stderr)
  sys.exit(1 if failures else 0)


if __name__ == '__main__':
  # Flags only when run as a command, so that other modules and tests can import it.
  command_line.define_config_flag('Only for a workdir without model.json: the config it was '
                                  'trained with.')
  flags.DEFINE_string('workdir', None, 'A trained workdir, or one written by '
                      'python -m alexnet_jax.commands.weights import.')
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best', or a step.")
  flags.DEFINE_integer('top', 5, 'How many classes to print for each image.')
  flags.DEFINE_bool('ten_patches', False, "The paper's ten patches (corners, centre and their "
                    'reflections), softmax averaged, instead of the centre patch.')
  flags.DEFINE_bool('json', False, 'One JSON document on stdout instead of text.')
  flags.DEFINE_integer('max_image_bytes', image_files.MAX_BYTES, 'A larger file is named and '
                       'skipped unread.')
  flags.DEFINE_integer('max_image_pixels', image_files.Limits().max_pixels, 'A larger image is '
                       'named and skipped from its header, undecoded.')
  flags.mark_flags_as_required(['workdir'])
  command_line.run(main)
