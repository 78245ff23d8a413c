"""Image files read within bounds: FIFOs and devices refused without blocking, byte caps,
folder trees with links back into themselves walked once."""

import os
import re
import threading

import pytest

from alexnet_jax.data import image_files


def finishes_within(seconds: float, function, *args, **kwargs):
  """function(*args, **kwargs), or a test failure if it has not returned after `seconds`
  (a read that blocks on a FIFO would otherwise hang the test run)."""
  outcome = {}

  def run():
    try:
      outcome['value'] = function(*args, **kwargs)
    except BaseException as e:   # handed to the test's thread as it is
      outcome['error'] = e

  thread = threading.Thread(target=run, daemon=True)   # a hung one does not keep pytest alive
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    pytest.fail(f'{function.__name__} still running after {seconds} s')
  if 'error' in outcome:
    raise outcome['error']
  return outcome['value']


def test_a_fifo_and_a_link_to_a_device_are_refused_without_reading(tmp_path):
  fifo = tmp_path / 'waiting.jpg'
  os.mkfifo(fifo)
  zero = tmp_path / 'endless.png'
  zero.symlink_to('/dev/zero')
  for path, kind in ((fifo, 'a FIFO'), (zero, 'a character device')):
    with pytest.raises(image_files.UnreadableImage, match=f'^{kind}, not a regular file$'):
      finishes_within(10, image_files.read, path)
    assert finishes_within(10, image_files.why_unreadable, path) == f'{kind}, not a regular file'


def test_a_file_over_the_byte_cap_is_named_with_the_cap(tmp_path):
  path = tmp_path / 'large.jpg'
  path.write_bytes(b'\xff\xd8' + bytes(1998))
  limits = image_files.Limits(max_bytes=1000)
  message = ('2,000 bytes, over the cap of 1,000 bytes an image may have '
             '(prepare and classify take --max_image_bytes)')
  with pytest.raises(image_files.UnreadableImage, match=f'^{re.escape(message)}$'):
    image_files.read(path, limits)
  assert image_files.why_unreadable(path, limits) == message
  assert image_files.read(path, image_files.Limits(max_bytes=2000)) == path.read_bytes()


def test_links_back_into_the_tree_are_walked_once(tmp_path):
  root = tmp_path / 'photos'
  (root / 'holiday').mkdir(parents=True)
  for name in ('a.jpg', 'holiday/b.PNG', 'holiday/notes.txt'):
    (root / name).write_bytes(b'')
  (root / 'again').symlink_to(root)                   # two links back into the tree: without
  (root / 'holiday' / 'up').symlink_to(root)          # a check, each loops until ELOOP
  outside = tmp_path / 'elsewhere'
  outside.mkdir()
  (outside / 'c.gif').write_bytes(b'')
  (root / 'linked').symlink_to(outside)               # a link out of the tree, twice
  (root / 'holiday' / 'linked_too').symlink_to(outside)
  found = finishes_within(10, image_files.images_under, str(root))
  assert found == [str(root / 'a.jpg'), str(root / 'holiday' / 'b.PNG'),
                   str(root / 'holiday' / 'linked_too' / 'c.gif')]
