"""Split names with an optional slice, as TFDS writes them: `train`, `train[:90%]`,
`validation[:1000]`, `train[-5000:]`.

The slice is resolved against the split's size from the dataset's own metadata or
listing, the same on every host, so that every host computes the same number of
examples, steps and evaluation batches.
"""

import dataclasses
import re

from alexnet_jax.errors import DataError

_SPEC = re.compile(r'^(?P<name>[\w-]+)(\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\])?$')


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  name: str
  start: str = ''
  stop: str = ''

  def __str__(self):
    return self.name + (f'[{self.start}:{self.stop}]' if self.start or self.stop else '')

  def bounds(self, size: int) -> tuple[int, int]:
    """[start, stop) of the slice in a split of `size` examples; an empty slice is an error."""
    start, stop = _position(self.start, size, 0), _position(self.stop, size, size)
    start, stop = min(max(start, 0), size), min(max(stop, 0), size)
    if stop <= start:
      raise DataError(f'The split {self} of {size} examples is empty: change the slice.')
    return start, stop


def parse(spec: str) -> SplitSpec:
  match = _SPEC.match(spec.replace(' ', ''))
  if not match:
    raise DataError(f'{spec!r} is not a split: write a name with an optional slice, e.g. '
                    'train, train[:90%], validation[:1000] or train[-5000:].')
  return SplitSpec(match['name'], match['start'] or '', match['stop'] or '')


def _position(text: str, size: int, default: int) -> int:
  if not text:
    return default
  if text.endswith('%'):
    value = int(text[:-1])
    if abs(value) > 100:
      raise DataError(f'{text} is not a percentage between -100% and 100%.')
    # Rounded as TFDS rounds percent slices ('closest').
    position = int(round(abs(value) * size / 100))
    return size - position if value < 0 else position
  value = int(text)
  return size + value if value < 0 else value
