"""The one-time preparation into a store: ImageNet from its tars, resuming, determinism,
undecodable files."""

import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import data
from alexnet_jax.data import prepare, store
from tests.conftest import IMAGENETTE, process_env
from tests.data.test_decode import handmade_png
from tests.data.test_image_files import finishes_within

ROOT = pathlib.Path(__file__).resolve().parents[2]
needs_imagenette = pytest.mark.skipif(
    not IMAGENETTE.is_dir(),
    reason=f'needs real JPEGs in {IMAGENETTE} (the shared data folder beside the checkout)')
WNIDS = ('n01440764', 'n02102040')


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def ilsvrc_tars(tmp_path):
  """ILSVRC2012_img_train.tar (one inner <wnid>.tar per class) and ILSVRC2012_img_val.tar (flat
  JPEGs), as image-net.org ships them, made of real Imagenette JPEGs."""
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as train:
    for wnid in WNIDS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as class_tar:
        for i, path in enumerate(sorted((IMAGENETTE / 'train' / wnid).iterdir())[:4]):
          _add(class_tar, f'{wnid}_{i}.JPEG', path.read_bytes())
      _add(train, f'{wnid}.tar', inner.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as val:
    paths = [p for wnid in WNIDS for p in sorted((IMAGENETTE / 'val' / wnid).iterdir())[:2]]
    for i, path in enumerate(paths):
      _add(val, f'ILSVRC2012_val_{i + 1:08d}.JPEG', path.read_bytes())
  return manual


@pytest.mark.slow
@needs_imagenette
def test_imagenet_tars_to_a_store_then_training_and_a_resume(ilsvrc_tars, tmp_path):
  out = tmp_path / 'alexnet_data' / 'imagenet2012_73'
  prepared = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.prepare', '--source=imagenet2012',
       f'--manual_dir={ilsvrc_tars}', f'--tfds_data_dir={tmp_path / "tfds"}', f'--out={out}',
       '--size=73', '--workers=2'],
      cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=600)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  assert f'--config.dataset={out} --config.resize_size=73' in prepared.stdout
  imagenet = store.open_store(out)
  assert (imagenet.examples('train'), imagenet.examples('validation')) == (8, 4)
  assert len(imagenet.classes) == 1000 and imagenet.classes[217] == 'n02102040'
  train = data.create(_store_config(str(out)), 4).train_batches(0)
  labels = np.concatenate([next(train).label for _ in range(2)])   # the 8 images
  assert sorted(labels) == [0] * 4 + [217] * 4   # wnid folders' ImageNet-1k indices

  flags = [f'--config.{k}={v}' for k, v in dict(
      dataset=out, width=0.125, image_size=64, resize_size=73, global_batch_size=4,
      eval_every_steps=3, log_every_steps=1, data_workers=0).items()]
  command = [sys.executable, 'main.py', '--config=configs/alexnet.py:owt',
             f'--workdir={tmp_path / "work"}', *flags]
  first = subprocess.run(command + ['--config.num_train_steps=3'], cwd=ROOT, env=process_env(),
                         capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'eval/examples=4' in first.stderr
  second = subprocess.run(command + ['--config.num_train_steps=5'], cwd=ROOT, env=process_env(),
                          capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Restored the checkpoint of step 3' in second.stderr
  assert 'training from step 3 to 5' in second.stderr


def _store_config(path):
  from tests.conftest import tiny_config
  config = tiny_config()
  config.dataset, config.global_batch_size = path, 4
  return config


@pytest.fixture
def folder(tmp_path):
  """ROOT/train/<class>/ of 9 generated JPEGs each (one of them damaged inside, one cut
  short), ROOT/val/<class>/ of 2."""
  root = tmp_path / 'images'
  rng = np.random.default_rng(1)
  for split, count in (('train', 9), ('val', 2)):
    for c, name in enumerate(('a', 'b')):
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (rng.integers(60, 120), rng.integers(60, 120), 3))
        Image.fromarray((pixels // 2 + 100 * c).astype(np.uint8)).save(
            root / split / name / f'{i}.jpg', quality=90)
  whole = (root / 'train' / 'a' / '0.jpg').read_bytes()
  # Complete (it ends with the end marker) but undecodable: found only when decoded.
  (root / 'train' / 'a' / 'damaged.jpg').write_bytes(whole[:2] + bytes(400) + whole[-2:])
  (root / 'train' / 'b' / 'cut_short.jpg').write_bytes(whole[:len(whole) // 2])
  return root


def _files(path) -> dict:
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(path).iterdir())}


def test_interrupted_preparation_resumes_to_the_same_bytes(folder, tmp_path, monkeypatch):
  source, options = f'image_folder:{folder}', prepare.Options(size=40, images_per_shard=3,
                                                              workers=0)
  straight = tmp_path / 'straight'
  prepare.prepare(source, str(straight), options, progress=False)

  interrupted = tmp_path / 'interrupted'
  real_write, written = prepare.write_shard, []

  def write_then_stop(shard, opts):
    if len(written) == 3:   # stop mid-run, a half-written shard left behind
      shard.path.with_name(shard.path.name + '.tmp').write_bytes(b'half a shard')
      raise KeyboardInterrupt
    written.append(shard.path.name)
    return real_write(shard, opts)

  monkeypatch.setattr(prepare, 'write_shard', write_then_stop)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(source, str(interrupted), options, progress=False)
  assert not store.is_complete(interrupted)
  with pytest.raises(data.DataError, match='not finished'):
    data.open_prepared(str(interrupted), None, 40)

  resumed = []
  monkeypatch.setattr(prepare, 'write_shard',
                      lambda shard, opts: resumed.append(shard.path.name) or real_write(shard, opts))
  prepare.prepare(source, str(interrupted), options, progress=False)
  assert not set(resumed) & set(written) and len(resumed) + 3 == len(
      [n for n in _files(straight) if n.endswith('.array_record')])
  assert _files(interrupted) == _files(straight)


def test_undecodable_images_are_logged_with_their_paths_and_left_out(folder, tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  out = tmp_path / 'store'
  prepared = prepare.prepare(f'image_folder:{folder}', str(out),
                             prepare.Options(size=40, images_per_shard=4, workers=0),
                             progress=False)
  damaged, cut_short = folder / 'train' / 'a' / 'damaged.jpg', folder / 'train' / 'b' / 'cut_short.jpg'
  assert f'Skipping {cut_short}' in caplog.text and 'end marker' in caplog.text
  assert f'Skipping {damaged}' in caplog.text
  assert prepared.examples('train') == 18 and prepared.examples('validation') == 4
  skipped = json.loads((out / 'metadata.json').read_text())['splits']['train']['skipped']
  assert len(skipped) == 1 and skipped[0].startswith(str(damaged))


def test_a_second_run_on_a_complete_store_changes_nothing(folder, tmp_path):
  out = tmp_path / 'store'
  options = prepare.Options(size=40, images_per_shard=4, workers=0)
  prepare.prepare(f'image_folder:{folder}', str(out), options, progress=False)
  before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
  shutil.rmtree(folder)   # not even the source is needed any more
  prepare.prepare(f'image_folder:{folder}', str(out), options, progress=False)
  assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_raw_pixels_store_the_same_squares_as_the_decoder_makes(folder, tmp_path):
  out = tmp_path / 'raw'
  prepare.prepare(f'image_folder:{folder}', str(out),
                  prepare.Options(size=40, encoding='raw', images_per_shard=5, workers=0),
                  progress=False)
  raw = store.open_store(out)
  first = raw.source_of('validation')[0]
  expected = data.decode.square((folder / 'val' / 'a' / '0.jpg').read_bytes(), 40)
  np.testing.assert_array_equal(first['image'], expected)
  assert int(first['label']) == 0


def add_hostile_files(class_dir: pathlib.Path) -> np.ndarray:
  """Files a careless or hostile folder holds, beside its images; returns the 8-bit image the
  16-bit one, deep.png, must become."""
  os.mkfifo(class_dir / 'fifo.jpg')                           # blocks whoever opens it
  (class_dir / 'zero.jpg').symlink_to('/dev/zero')            # never ends
  tiff = io.BytesIO()
  Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tiff, 'TIFF')
  (class_dir / 'tiff.png').write_bytes(tiff.getvalue())       # Pillow reads it; not ours
  whole = (class_dir / '0.jpg').read_bytes()
  (class_dir / 'grey.jpg').write_bytes(whole[:len(whole) * 6 // 10] + b'\xff\xd9')
  (class_dir / 'huge.png').write_bytes(handmade_png(13000, 13000))   # a header, no pixels
  samples = (np.arange(40 * 40, dtype=np.uint32).reshape(40, 40) * 40).astype(np.uint16)
  rows = b''.join(b'\x00' + row.astype('>u2').tobytes() for row in samples)
  (class_dir / 'deep.png').write_bytes(handmade_png(40, 40, bit_depth=16, colour_type=0,
                                                    rows=rows))
  return np.repeat((samples >> 8).astype(np.uint8)[..., None], 3, axis=-1)


def test_fifos_devices_other_formats_cut_short_and_huge_images_are_skipped_and_named(
    folder, tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  deep = add_hostile_files(folder / 'train' / 'a')
  (folder / 'train' / 'c').symlink_to(folder / 'train' / 'a')   # a class twice
  out = tmp_path / 'store'
  prepared = finishes_within(120, prepare.prepare, f'image_folder:{folder}', str(out),
                             prepare.Options(size=40, encoding='raw', workers=0), progress=False)
  a = folder / 'train' / 'a'
  for line in (f'Skipping {a / "fifo.jpg"}: a FIFO, not a regular file',
               f'Skipping {a / "zero.jpg"}: a character device, not a regular file',
               f'Skipping {a / "tiff.png"}: not a JPEG, PNG, GIF or BMP file',
               f'Skipping {folder / "train" / "c"}: a link to {a}, whose images are listed'):
    assert line in caplog.text
  skipped = json.loads((out / 'metadata.json').read_text())['splits']['train']['skipped']
  assert [line.split(':')[0] for line in skipped] == [str(a / n) for n in (
      'damaged.jpg', 'grey.jpg', 'huge.png')]
  assert 'a JPEG cut short' in skipped[1]
  assert '13000x13000 pixels, over the cap of 67,108,864 pixels' in skipped[2]
  assert prepared.examples('train') == 19   # 9 in a, 9 in b, and deep.png
  # Written in listing order: 0.jpg ... 8.jpg, then deep.png, its high bytes (not white).
  np.testing.assert_array_equal(prepared.source_of('train')[9]['image'], deep)
