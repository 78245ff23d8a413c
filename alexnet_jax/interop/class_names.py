"""How a model's classes are shown to people: ImageNet wnids by the words of their WordNet
synset (shipped in imagenet_wordnet.tsv, with WordNet's licence), other names as they are."""

import functools
import pathlib

WORDNET_FILE = pathlib.Path(__file__).with_name('imagenet_wordnet.tsv')
IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_wordnet() -> dict[str, str]:
  """{wnid: its WordNet words} for ImageNet-1k's classes, in the order of their indices."""
  rows = [line.split('\t') for line in WORDNET_FILE.read_text().splitlines()
          if line and not line.startswith('#')]
  return {wnid: words for wnid, words in rows}


def imagenet_wnids() -> list[str]:
  """ImageNet-1k's wnids by class index (the sorted wnids: TFDS's and torchvision's order)."""
  return list(imagenet_wordnet())


def display_names(class_names, num_classes: int) -> list[str]:
  """What to print for each of `num_classes` outputs: WordNet's words where the class is
  named by an ImageNet wnid, the class's own name otherwise, 'class i' where it has none.
  A model of 1000 classes whose names are not known is taken for ImageNet-1k's."""
  names = list(class_names)
  if not names and num_classes == IMAGENET_CLASSES:
    names = imagenet_wnids()
  wordnet = imagenet_wordnet()
  return [wordnet.get(names[i], names[i]) if i < len(names) else f'class {i}'
          for i in range(num_classes)]
