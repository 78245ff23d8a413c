"""The kernels of a compiled step, read from a profiler trace without TensorBoard.

`jax.profiler.trace` writes the trace; `jax.profiler.ProfileData` reads its `.xplane.pb`. On
a GPU the planes named `/device:GPU:N` hold one event per kernel on their `Stream` lines (the
`XLA Ops` and `XLA Modules` lines repeat the same time); kernel `loop_fusion_52` is
`loop_fusion.52` in the compiled HLO text. The trace turns CUDA graphs off, so gaps between
kernels look larger than they are: the kernels' own times are the figures to read. On the
CPU the host plane holds the XLA ops that the CPU client's threads ran.
"""

import collections
import pathlib
import tempfile
from typing import Callable

import jax

from alexnet_jax.benchmarking import table

_GPU_PLANE, _GPU_LINE = '/device:GPU:', 'Stream'
_CPU_PLANE, _CPU_LINE = '/host:CPU', 'tf_XLAPjRtCpuClient'
# Markers of the CPU client's thread pool, not work.
_CPU_MARKERS = ('ThreadpoolListener::', 'end: ')


def traced_kernels(run: Callable[[], None], steps: int) -> tuple[str, dict[str, float]]:
  """(where the kernels were found, {kernel: ms per step}) of `run`, which runs `steps` steps
  and waits for them."""
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      run()
    files = sorted(pathlib.Path(folder).rglob('*.xplane.pb'))
    if not files:
      return 'the profiler wrote no trace', {}
    return kernel_times(jax.profiler.ProfileData.from_file(str(files[-1])), steps)


def kernel_times(profile, steps: int) -> tuple[str, dict[str, float]]:
  """The kernels' total time in `profile` by name, in ms per step: the GPUs' kernels where
  the trace has a GPU, else the XLA ops of the CPU client's threads."""
  totals = collections.Counter()
  gpus = [p for p in profile.planes if p.name.startswith(_GPU_PLANE)]
  if gpus:
    source = f'{len(gpus)} GPU plane(s), their {_GPU_LINE} lines'
    events = (e for p in gpus for line in p.lines if line.name.startswith(_GPU_LINE)
              for e in line.events)
  else:
    cpu = profile.find_plane_with_name(_CPU_PLANE)
    source = f'no GPU in the trace: what {_CPU_PLANE}\'s {_CPU_LINE} threads recorded'
    events = (e for line in (cpu.lines if cpu else ()) if line.name.startswith(_CPU_LINE)
              for e in line.events if not e.name.startswith(_CPU_MARKERS))
  for event in events:
    totals[event.name] += event.duration_ns
  return source, {name: ns / 1e6 / steps for name, ns in totals.items() if ns > 0}


def print_kernel_table(title: str, source: str, times: dict[str, float], top: int = 15) -> None:
  """The `top` longest kernels, in ms per step and as a share of all kernels' time."""
  total = sum(times.values())
  print(f'\n{title}: {len(times)} kernels, {total:.3f} ms per step ({source})')
  if not times:
    print('The trace holds no kernel events.')
    return
  longest = sorted(times.items(), key=lambda item: -item[1])[:top]
  table.print_markdown(('kernel', 'ms per step', 'share'),
                       [(name, f'{ms:.3f}', f'{ms / total:.1%}') for name, ms in longest])
