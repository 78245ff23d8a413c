"""The throughput benchmarks run, count FLOPs right, and need no TensorFlow."""

import dataclasses
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax.benchmarking import photo_like
from alexnet_jax.commands import benchmark, benchmark_step_rewrites
from alexnet_jax.data import augment, loader, prepare, store
from configs import alexnet
from tests.conftest import write_image_folder

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('command', ['benchmark', 'benchmark_step_rewrites'])
def test_benchmark_imports_no_tensorflow(command):
  # The GPU machines it is meant for have JAX but no TensorFlow.
  code = (f'import sys, alexnet_jax.commands.{command}; '
          'assert "tensorflow" not in sys.modules, sorted(sys.modules)')
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=120)


def test_benchmark_steps_augment_and_descend_as_the_owt_config_trains():
  """The benchmark builds the step without loading a config (it runs where ml_collections is
  not installed): what it builds is the `owt` config's augmentation and SGD all the same."""
  config = alexnet.get_config('owt')
  expected, got = augment.from_config(config), augment.imagenet(config.image_size)
  for field in dataclasses.fields(augment.Augmentation):
    np.testing.assert_array_equal(getattr(got, field.name), getattr(expected, field.name),
                                  err_msg=field.name)
  assert benchmark.SGD == {name: config[name]
                           for name in ('learning_rate', 'momentum', 'weight_decay')}


def _taps(size: int, kernel: int, stride: int, padding: int) -> int:
  """Kernel taps that land inside the image, summed over the output positions of one axis."""
  out = (size + 2 * padding - kernel) // stride + 1
  return sum(1 for i in range(out) for t in range(kernel) if 0 <= stride * i - padding + t < size)


def _owt_macs() -> int:
  """Multiply-adds of torchvision's AlexNet on one 224x224 image, counted by hand."""
  convs = [(224, 11, 4, 2, 3, 64), (27, 5, 1, 2, 64, 192), (13, 3, 1, 1, 192, 384),
           (13, 3, 1, 1, 384, 256), (13, 3, 1, 1, 256, 256)]
  macs = sum(_taps(n, k, s, p) ** 2 * c_in * c_out for n, k, s, p, c_in, c_out in convs)
  return macs + 9216 * 4096 + 4096 * 4096 + 4096 * 1000


def test_forward_flops_match_a_hand_count_of_torchvisions_alexnet():
  # 658 million multiply-adds; the usual 714 million also counts the taps on zero padding.
  flops = benchmark.forward_flops(models.AlexNet(variant='owt'), 224)
  assert abs(flops / (2 * _owt_macs()) - 1) < 0.01   # biases, ReLUs and pooling are the rest


def test_step_benchmark_reports_a_rate_on_a_model_split_over_two_devices():
  # The data-parallel mesh runs in the command test below.
  result = benchmark.bench_jax('paper', 'float32', global_batch=4, image_size=64, num_classes=10,
                               num_steps=1, warmup=1, repeats=1, peak_tflops=1.0, model_axis_size=2)
  assert result['images_per_s'] > 0 and result['compile_s'] > 0
  assert result['mfu'].endswith('%') and 'GiB' not in result['memory']


@pytest.mark.slow   # a whole command in a process of its own
def test_command_runs_a_configuration_in_its_own_process_with_the_flags_given():
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark', '--models=owt', '--dtypes=float32',
             '--batch_sizes=4', '--image_size=64', '--num_classes=10', '--steps=1',
             '--repeats=1', '--warmup=0', '--torch=off']
  output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=300).stdout
  rows = [line for line in output.splitlines() if line.startswith('| owt |')]
  assert [row.split(' | ')[3] for row in rows] == ['4']
  assert all(row.split(' | ')[-4:] == ['-', '-', '-', '- |'] for row in rows)   # --torch=off reached them
  assert 'PyTorch peer: off (--torch=off)' in output.splitlines()


@pytest.mark.slow   # a whole command in a process of its own
@pytest.mark.skipif(importlib.util.find_spec('torch') is not None,
                    reason='torch is installed here: tests/benchmarking/test_torch_peer.py times the peer')
def test_command_says_in_a_line_that_torch_is_absent_and_times_jax_alone():
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark', '--models=owt',
             '--dtypes=bfloat16', '--batch_sizes=4', '--image_size=64', '--num_classes=10',
             '--steps=1', '--repeats=1', '--warmup=0']
  output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=300).stdout
  assert [line for line in output.splitlines() if line.startswith('PyTorch peer')] == [
      'PyTorch peer: not timed, torch and torchvision are not installed '
      '(pip install torch torchvision to time it)']
  rows = [line.split(' | ') for line in output.splitlines() if line.startswith('| owt |')]
  assert len(rows) == 1 and float(rows[0][4]) > 0 and rows[0][-4:] == ['-', '-', '-', '- |']


def _folder_and_store(tmp_path, size: int):
  """A folder of 3 classes of 12 JPEGs, and its store at `size`."""
  folder = write_image_folder(tmp_path / 'images', train=12)
  store = tmp_path / 'store'
  prepare.prepare(f'image_folder:{folder}', str(store),
                  prepare.Options(size=size, images_per_shard=16, workers=0), progress=False)
  return folder, store


def _run_without_tensorflow(command: str, *flags: str) -> str:
  """The output of `python -m alexnet_jax.commands.COMMAND FLAGS`, which must import no
  TensorFlow, clu or ml_collections (GPU hosts have JAX and the loader's wheels only)."""
  code = ('import runpy, sys; sys.argv = sys.argv[1:]; '
          f'runpy.run_module("alexnet_jax.commands.{command}", run_name="__main__"); '
          'banned = [m for m in ("tensorflow", "clu", "ml_collections") if m in sys.modules]; '
          'assert not banned, banned')
  return subprocess.run([sys.executable, '-c', code, command, *flags], cwd=ROOT, check=True,
                        capture_output=True, text=True, timeout=300).stdout


@pytest.mark.slow   # a whole command in a process of its own
def test_loop_benchmark_reads_a_store_and_a_folder_without_tensorflow(tmp_path):
  """The loop benchmark on a store of a small folder: its rows, and no TensorFlow, clu or
  ml_collections imported (GPU hosts have JAX and the loader's wheels only)."""
  folder, store = _folder_and_store(tmp_path, size=73)
  output = _run_without_tensorflow(
      'benchmark_loop', f'--store={store}', f'--folder={folder}', '--stored_size=73',
      '--model=owt', '--width=0.125', '--image_size=64', '--batch=4', '--steps=2', '--warmup=1',
      '--workers=1', '--threads=1', '--readings=0x1,1x1', '--rounds=1')
  rows = [line for line in output.splitlines() if line.startswith('| ') and 'images/s' not in line
          and '---' not in line]
  assert [row.split(' | ')[0] for row in rows] == [
      "| decode alone: the store's JPEGs, one thread",
      f"| decode alone: the store's JPEGs, {loader.cores()} processes at once",
      '| input alone: the store, 1 thread in this process',
      '| input alone: the store, 1 decoding process x 1 thread',
      '| input alone: JPEG files decoded and resized as read',
      '| step alone (batch already on the devices)', '| the loop: the store, then the step']
  assert all(float(row.split(' | ')[1].replace(',', '')) > 0 for row in rows)
  assert all(float(row.split(' | ')[-1].rstrip(' |')) > 0 for row in rows[-2:])   # thread ms


def test_photo_like_images_weigh_what_photos_weigh_as_stored_jpegs():
  """At 256x256 and quality 90, real photos' JPEGs weigh 11 to 31 KB (5th to 95th percentile
  over ImageNet's one image per class, median 19.5): so do the photo-like ones."""
  from PIL import Image
  sizes = []
  for seed in range(12):
    image = photo_like.photo_like(np.random.default_rng(seed), 375, 500)
    square = Image.fromarray(image[:, 62:437]).resize((256, 256), Image.BILINEAR)
    sizes.append(len(store.encode_record(0, np.asarray(square), 'jpeg', 90)))
  assert 11_000 < np.median(sizes) < 31_000 and min(sizes) > 8_000 and max(sizes) < 40_000


def _rewrites_round(*flags) -> list[str]:
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark_step_rewrites', '--smoke',
             *flags]
  return subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                        timeout=900).stdout.splitlines()


def _table(lines) -> list[list[str]]:
  """The final markdown table's rows, as cells."""
  start = lines.index('| ' + ' | '.join(benchmark_step_rewrites.HEADER) + ' |')
  return [line.strip('| ').split(' | ') for line in lines[start + 2:] if line.startswith('| ')]


def _assert_torch_line(lines):
  torch_lines = [line for line in lines if line.startswith('torch.compile')]
  if importlib.util.find_spec('torch') is None:
    assert torch_lines == ['torch.compile: not timed, torch and torchvision are not installed '
                           '(pip install torch torchvision to time it)']
  else:
    assert len(torch_lines) == 1 and 'images/s' in torch_lines[0], torch_lines


@pytest.mark.slow   # a whole command in a process of its own
def test_rewrites_round_smoke_times_and_checks_each_owt_row_and_lists_kernels():
  lines = _rewrites_round('--models=owt', '--owt_large_batch=0')
  _assert_torch_line(lines)
  rows = _table(lines)
  assert [row[2] for row in rows] == ['today', 'conv1=space_to_depth', 'max_pool=slices', 'all']
  assert all(float(row[3].replace(',', '')) > 0 for row in rows)
  assert rows[0][-1] == 'the reference' and all(row[-1].startswith('ok: ') for row in rows[1:])
  # The kernels of today's step and of the fastest one, read from a trace.
  titles = [line for line in lines if line.startswith('owt, batch 4, ')]
  assert titles[0].startswith('owt, batch 4, today: ') and 1 <= len(titles) <= 2
  assert lines[lines.index(titles[0]) + 1] in ('| kernel | ms per step | share |',
                                               'The trace holds no kernel events.')


@pytest.mark.slow
def test_rewrites_round_smoke_runs_every_row_of_both_models():
  rows = _table(_rewrites_round())
  expected = ['today', 'conv1=space_to_depth', 'max_pool=slices', 'lrn_gradient=by_hand',
              'tower_layout=apart', 'all']
  assert [(row[0], row[1], row[2]) for row in rows] == (
      [('owt', '4', name) for name in ('today', *expected[1:3], 'all')] +
      [('owt', '8', 'today'), ('owt', '8', 'all')] + [('paper', '4', name) for name in expected])
  assert all(row[-1].startswith('ok: ') for row in rows if row[2] != 'today')


def test_rewrites_round_counts_the_models_own_flops_not_the_blocks_zero_taps():
  args = benchmark_step_rewrites._parse_args([])
  per_image = benchmark_step_rewrites.train_flops_per_image(args, 'owt')
  assert abs(per_image / (3 * 2 * _owt_macs()) - 1) < 0.01
  # What XLA counts for conv1 on blocks: every tap of the 3x3x48 kernel at each of the 55x55
  # outputs, where the model's own conv1 has the 11x11x3 taps inside the image.
  on_blocks = benchmark.forward_flops(models.AlexNet(variant='owt', conv1='space_to_depth'), 224)
  zero_taps = 2 * 64 * (55 * 55 * 3 * 3 * 48 - 3 * _taps(224, 11, 4, 2) ** 2)
  assert on_blocks - benchmark.forward_flops(models.AlexNet(variant='owt'), 224) == zero_taps


@pytest.mark.slow   # a whole round, every table of it
def test_the_gpu_round_runs_on_the_cpu_with_the_stand_in_decoder(tmp_path):
  """`benchmark_gpu_feed --smoke`: every row of the round, on a small store, with no
  TensorFlow, clu or ml_collections imported."""
  _, store = _folder_and_store(tmp_path, size=72)
  output = _run_without_tensorflow('benchmark_gpu_feed', '--smoke', f'--store={store}',
                                   '--overlapped=2')
  rows = [line.split(' | ') for line in output.splitlines()
          if line.startswith('| ') and not line.startswith('| what |')]
  assert [row[0] for row in rows] == [
      '| decoder alone: hardware engines, 16 rows',
      '| decoder alone: CUDA decoder, Huffman on the host, 16 rows',
      '| decoder alone: CUDA decoder, Huffman on the GPU (threshold 0), 16 rows',
      '| 1 decoder at once (hardware engines), 8 rows',
      '| 2 decoders at once (hardware engines), 8 rows',
      '| 1 decoder at once (hardware engines), 16 rows',
      '| 2 decoders at once (hardware engines), 16 rows',
      '| owt step alone, batch 16', '| owt step beside 2 decoders at once',
      '| owt: step alone', '| owt: the loop, the host decoding, 1 thread in this process',
      '| owt: the loop, the host decoding, 2 threads in this process',
      '| owt: the loop, one batch at a time, half the rows on the host',
      '| owt: the loop, 2 batches at once, the measured split',
      '| input alone: the host decoding, 1 thread in this process',
      '| input alone: 2 batches at once, the measured split']
  assert all(float(row[1].replace(',', '')) > 0 for row in rows)
  # The stand-in decodes with libjpeg-turbo: its pixels are the host's.
  assert all(row[-1].startswith('from libjpeg-turbo: 0 at most') for row in rows[:3])
  assert 'rows on the host' in rows[-1][-1]
