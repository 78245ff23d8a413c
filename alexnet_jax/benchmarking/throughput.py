"""Images/s of each part of the training loop, and of the loop: the decoder alone, the loader
alone, the train step alone (a batch already on the devices) and the loop (the loader's batches
put on the devices, as the trainer puts them, and trained on).

Each returns images/s and the cores used (CPU time of this process and its decoding processes
over wall time); the step and the loop also the CPU time the training thread spent per step.
"""

import concurrent.futures
import multiprocessing
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, optim
from alexnet_jax.benchmarking.clock import Clock
from alexnet_jax.data import augment, image_source, loader, store, to_devices
from alexnet_jax.parallel import placement, steps

# compare_inputs' rows of the decoder by itself: on one thread, and in a process per core.
DECODE_ALONE, DECODE_EVERY_CORE = 'decode alone', 'decode alone on every core'


def records_of(split: store.StoreSplit, count: int) -> list[bytes]:
  """The first `count` stored records of `split`."""
  return [split.record(i) for i in range(min(count, len(split)))]


def _decode_loop(split: store.StoreSplit, images: int) -> tuple[int, float, float]:
  """(images, CPU seconds, wall seconds) of decoding the store's JPEGs on this thread."""
  records = records_of(split, images)
  out = np.empty((split.image_size, split.image_size, 3), np.uint8)
  wall, cpu = time.perf_counter(), time.thread_time()
  for record in records:
    store.decode_record_into(record, 'jpeg', out)
  return len(records), time.thread_time() - cpu, time.perf_counter() - wall


def decode_alone(split: store.StoreSplit, images: int, processes: int = 1) -> tuple[float, float]:
  """(images/s, cores used) of libjpeg-turbo decoding the store's JPEGs, on this thread or in
  `processes` processes at once (two cores busy decode slower each than one: they share the
  caches and the memory)."""
  if processes == 1:
    count, cpu, wall = _decode_loop(split, images)
    return count / wall, cpu / wall
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
    runs = list(pool.map(_decode_loop, [split] * processes, [images] * processes))
  wall = max(w for _, _, w in runs)
  return sum(n for n, _, _ in runs) / wall, sum(c for _, c, _ in runs) / wall


def _data(split: image_source.Split, size: int, batch: int, reading: loader.Reading):
  return loader.make_data(split, split, name='benchmark', num_classes=1000, image_size=size,
                          global_batch=batch, seed=0, reading=reading)


def input_alone(split: image_source.Split, size: int, batch: int, reading: loader.Reading,
                num_steps: int, warmup: int) -> tuple[float, float]:
  """(images/s, cores used) of the loader alone."""
  stream = _data(split, size, batch, reading).train_batches(0)
  try:
    for _ in range(warmup):
      next(stream)
    with Clock() as clock:
      for _ in range(num_steps):
        next(stream)
      clock.stop()
  finally:
    stream.close()
  return num_steps * batch / clock.wall, clock.cores


class Step:
  """The trainer's train step for one model on all local devices."""

  def __init__(self, model: str, width: float, dtype: str, image_size: int):
    self.mesh = placement.make_mesh(jax.local_devices())
    self.model = models.AlexNet(num_classes=1000, variant=model, width=width,
                                dtype=jnp.dtype(dtype))
    self.state = placement.init_train_state(self.model, optim.paper_sgd(0.01), image_size, 0,
                                           self.mesh)
    self.spec = placement.batch_spec(self.model, self.mesh)
    self.step = steps.make_train_step(self.model, augment.imagenet(image_size), 0,
                                         self.mesh)

  def run(self, batches, num_steps: int, warmup: int) -> Clock:
    """`num_steps` steps on `batches` (an iterator of device batches), timed."""
    for _ in range(warmup):
      self.state, metrics = self.step(self.state, next(batches))
    jax.block_until_ready(self.state)
    with Clock() as clock:
      for _ in range(num_steps):
        self.state, metrics = self.step(self.state, next(batches))
      jax.block_until_ready((self.state, metrics))
      clock.stop()
    return clock


def step_alone(step: Step, size: int, batch: int, num_steps: int, warmup: int):
  """(images/s, cores used, training thread's CPU ms per step)."""
  rng = np.random.default_rng(0)
  on_devices = placement.shard_batch({
      'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
      'label': rng.integers(0, 1000, (batch,), np.int32)}, step.mesh, step.spec)
  clock = step.run(iter(lambda: on_devices, None), num_steps, warmup)
  return num_steps * batch / clock.wall, clock.cores, 1000 * clock.thread / num_steps


def loop(step: Step, split: image_source.Split, size: int, batch: int, reading: loader.Reading,
         num_steps: int, warmup: int, staging: str = 'auto', decoder=None, host_share: float = 0.0,
         decoders=None):
  """(images/s, cores used, training thread's CPU ms per step) of the loader's batches,
  copied to the devices on its background thread (and with `decoder` their JPEGs decoded
  there, but `host_share` of each device's rows; with `decoders`, len(decoders) batches at
  once), trained on."""
  batches = _on_devices(step, split, size, batch, reading, staging,
                        decoders or ([decoder] if decoder else None), host_share)
  try:
    clock = step.run(batches, num_steps, warmup)
  finally:
    batches.close()
  return num_steps * batch / clock.wall, clock.cores, 1000 * clock.thread / num_steps


def _on_devices(step: Step, split: image_source.Split, size: int, batch: int,
                reading: loader.Reading, staging: str, decoders, host_share: float):
  """The loader's batches of `split`, put on `step`'s devices as the trainer puts them."""
  put = to_devices.ToDevices(step.mesh, step.spec, staging, decoders=decoders,
                             host_batch=batch, host_share=host_share)
  return _data(split, size, batch, reading).train_batches(0, put=put, split=put.decode_split)


def input_to_devices(step: Step, split: image_source.Split, size: int, batch: int,
                     reading: loader.Reading, num_steps: int, warmup: int, decoder=None,
                     host_share: float = 0.0, decoders=None):
  """(images/s, cores used, None) of the loader's batches put on the devices, decoded there
  by `decoder` (but `host_share` of each device's rows; with `decoders`, len(decoders)
  batches at once), without a step."""
  batches = _on_devices(step, split, size, batch, reading, 'auto',
                        decoders or ([decoder] if decoder else None), host_share)
  try:
    for _ in range(warmup):
      next(batches)
    with Clock() as clock:
      for _ in range(num_steps):
        jax.block_until_ready(next(batches))
      clock.stop()
  finally:
    batches.close()
  return num_steps * batch / clock.wall, clock.cores, None


def compare_inputs(split: image_source.Split, size: int, batch: int, readings, rounds: int,
                   num_steps: int, warmup: int, decode: store.StoreSplit | None = None) -> dict:
  """{reading: (median images/s, median cores used)}, and {'decode alone': ...} with `decode`
  (a store of JPEGs): the rows measured in turns, `rounds` times, so that whatever else the
  machine does slows each alike."""
  decoders = [DECODE_ALONE, DECODE_EVERY_CORE] if decode else []
  results = {reading: [] for reading in decoders + list(readings)}
  for _ in range(rounds):
    for reading in results:
      if reading in decoders:
        processes = 1 if reading == DECODE_ALONE else loader.cores()
        results[reading].append(decode_alone(decode, batch * num_steps, processes))
      else:
        results[reading].append(input_alone(split, size, batch, reading, num_steps, warmup))
  return {reading: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
          for reading, runs in results.items()}


def describe_reading(reading: loader.Reading) -> str:
  threads = f'{reading.threads} thread{"s" if reading.threads != 1 else ""}'
  if reading.workers == 0:
    return f'{threads} in this process'
  return f'{reading.workers} decoding process{"es" if reading.workers != 1 else ""} x {threads}'
