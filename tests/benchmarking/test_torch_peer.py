"""PyTorch's peer of the training step: it runs, it is timed, and its SGD is the paper's."""

import importlib.util
import math
import pathlib
import subprocess
import sys
import time

import pytest

from alexnet_jax.benchmarking import torch_peer
from alexnet_jax.commands import benchmark
from alexnet_jax.data import imagenet_color

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ('torch', 'torchvision')),
    reason='torch and torchvision are not installed here (the peer needs both; '
           'tests/commands/test_benchmark.py checks the benchmark without them)')


# torch.compile's first step compiles C++ for the CPU: minutes on 2 cores.
@pytest.mark.parametrize('mode', ['eager', pytest.param('compile', marks=pytest.mark.slow)])
def test_the_peer_trains_a_few_steps_on_the_cpu_and_reports_a_rate(mode):
  start = time.perf_counter()
  rate = torch_peer.images_per_s(mode, 'cpu', 'bfloat16', batch=2, image_size=64,
                                 num_classes=10, mean_rgb=imagenet_color.MEAN_RGB,
                                 std_rgb=imagenet_color.STD_RGB,
                                 sgd_hyperparameters=benchmark.SGD, steps=2, warmup=1,
                                 repeats=1)
  elapsed = time.perf_counter() - start
  # The 4 timed images took part of the call, so their rate is at least the whole call's; a
  # rate counted over the wrong images or seconds falls outside.
  assert math.isfinite(rate) and 2 * 2 / elapsed <= rate < 1e6


def _pytorch_sgd_by_hand(w, grads, lr, momentum, weight_decay):
  """PyTorch's SGD rule written out: d = g + weight_decay w; b = d on the first step, then
  b = momentum b + d; w <- w - lr b."""
  b = None
  for g in grads:
    d = [gi + weight_decay * wi for gi, wi in zip(g, w)]
    b = d if b is None else [momentum * bi + di for bi, di in zip(b, d)]
    w = [wi - lr * bi for wi, bi in zip(w, b)]
  return w


def test_the_peers_sgd_takes_the_papers_momentum_and_weight_decay():
  """Two steps (momentum shows from the second) of the benchmark's SGD on a tiny tensor."""
  import torch
  w0 = [0.5, -1.5, 2.0]
  grads = ([0.25, 1.0, -3.0], [-2.0, 0.5, 4.0])
  weight = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
  optimizer = torch_peer.sgd([weight], **benchmark.SGD)
  for g in grads:
    weight.grad = torch.tensor(g, dtype=torch.float64)
    optimizer.step()
  got = weight.detach().tolist()
  assert got == pytest.approx(_pytorch_sgd_by_hand(w0, grads, 0.01, 0.9, 5e-4), rel=1e-12)
  # The tolerance tells the paper's values from others: no momentum, no weight decay, lr 0.1.
  for other in ((0.01, 0.0, 5e-4), (0.01, 0.9, 0.0), (0.1, 0.9, 5e-4)):
    assert got != pytest.approx(_pytorch_sgd_by_hand(w0, grads, *other), rel=1e-12)


@pytest.mark.slow
def test_command_times_the_peer_beside_the_owt_row():
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark', '--models=owt,paper',
             '--dtypes=bfloat16', '--batch_sizes=2', '--image_size=64', '--num_classes=10',
             '--steps=1', '--repeats=1', '--warmup=1']
  output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=900).stdout
  assert any(line.startswith('PyTorch peer: torch ') and 'eager and compile' in line
             for line in output.splitlines())
  rows = {line.split(' | ')[0][2:]: line.rstrip(' |').split(' | ')
          for line in output.splitlines() if line.startswith(('| owt |', '| paper |'))}
  owt, paper = rows['owt'], rows['paper']
  jax_rate, eager, compiled, over_eager, over_compiled = map(float, [owt[4], *owt[-4:]])
  assert eager > 0 and compiled > 0
  # The ratios of the unrounded rates, which the table prints to 0.05 and the ratio to 0.005.
  for ratio, torch_rate in ((over_eager, eager), (over_compiled, compiled)):
    assert ((jax_rate - 0.05) / (torch_rate + 0.05) - 0.005 <= ratio
            <= (jax_rate + 0.05) / (torch_rate - 0.05) + 0.005)
  assert paper[-4:] == ['-', '-', '-', '-']   # the peer is torchvision's, the owt network
