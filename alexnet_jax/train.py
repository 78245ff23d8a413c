"""train_and_evaluate: the training loop, its evaluations, checkpoints and summaries."""

import collections
import logging
import math
import queue
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import parameter_overview
from flax.training import train_state
from jax.experimental import multihost_utils

from alexnet_jax import (checkpointing, color_stats, config_checks, data, errors, evaluate,
                         init_from, model_record, models, optim, parallel, platform, progress,
                         summaries)
from alexnet_jax import preemption as preemption_lib
from alexnet_jax.data import to_devices


def _steps(steps: int, epochs: float, steps_per_epoch: int) -> int:
  """A duration given in steps (if positive) or else in epochs, in steps."""
  return int(steps) if steps > 0 else max(1, int(math.ceil(epochs * steps_per_epoch)))


def create_model(config, num_classes: int) -> models.AlexNet:
  return models.AlexNet(num_classes=num_classes, variant=config.model, width=config.width,
                        dropout_rate=config.dropout_rate,
                        dtype=jnp.dtype(platform.compute_dtype(config.dtype)),
                        initialization=config.initialization)


def create_train_state(config, model, mesh, rate_schedule=None) -> train_state.TrainState:
  """The initial state of the paper's optimiser, created directly on every device of the mesh.

  `rate_schedule`: the run's `optim.schedule`, which sets the rate of each step; without it
  the rate stays as set (the same structure: a state to restore a checkpoint into).
  """
  tx = optim.paper_sgd(config.learning_rate, config.momentum, config.weight_decay,
                       rate_schedule)
  return parallel.init_train_state(model, tx, config.image_size, config.seed, mesh)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates as `config` says, resuming from the newest checkpoint in `workdir`.

  Returns the last evaluation's metrics.
  """
  config_checks.check(config, jax.device_count(), jax.local_device_count())
  mesh = parallel.make_mesh(model_axis_size=config.model_axis_size)
  config_checks.check_workdir(workdir)
  config_checks.check_workdir_shared(workdir)
  init_from.check(config)
  aug = color_stats.augmentation(config, workdir)
  dataset = data.create(config, config.global_batch_size, jax.process_index(),
                        jax.process_count())
  steps_per_epoch = dataset.steps_per_epoch
  num_steps = _steps(config.num_train_steps, config.num_epochs, steps_per_epoch)
  eval_every = _steps(config.eval_every_steps, config.eval_every_epochs, steps_per_epoch)
  config_checks.check_classes(config, dataset.num_classes)
  platform.check_backend(dataset.train_examples, config.allow_cpu)
  if jax.process_index() == 0:   # what the workdir holds, for the commands that read it
    model_record.write(workdir, config, dataset.class_names)
  logging.info('Training on %s; a mesh of %s; %d train examples, %d steps per epoch, %d steps; '
               '%d validation examples.', platform.describe(), dict(mesh.shape),
               dataset.train_examples, steps_per_epoch, num_steps, dataset.eval_examples)

  model = create_model(config, dataset.num_classes)
  batch_spec = parallel.batch_spec(model, mesh)
  rate_schedule = optim.schedule(config.lr_schedule, config.learning_rate, num_steps)
  state = create_train_state(config, model, mesh, rate_schedule)
  plateau = optim.PlateauController(config.learning_rate, **config.plateau)

  def learning_rate(step: int) -> float:
    """The rate step `step` (counted from 1) trained with."""
    return plateau.learning_rate if rate_schedule is None else float(rate_schedule(step - 1))
  root = checkpointing.workdir_path(workdir)
  best_error = best_step = None   # the lowest validation top-1 error so far, and its step
  checkpoints = checkpointing.Checkpoints(
      str(root / 'checkpoints'), keep=config.keep_checkpoints,
      best_step=lambda: best_step if config.keep_best_checkpoint else None)
  pending_eval = False   # stopped during the evaluation of the step it saved
  restored = checkpoints.restore(state)
  if restored is None and config.init_from:
    state = state.replace(params=init_from.initial_params(config, state.params))
  elif config.init_from:
    logging.info('Resuming from this run\'s own checkpoint; --config.init_from is not read.')
  if restored is not None:
    state, saved_loop_state = restored
    plateau.load_state_dict(saved_loop_state['plateau'])
    best_error = saved_loop_state.get('best_top1_error')
    best_step = saved_loop_state.get('best_step')
    pending_eval = saved_loop_state.get('pending_eval', False)
  start_step = int(jax.device_get(state.step))
  _check_space(root, state, config.keep_checkpoints + 2)

  writer = summaries.Summaries(workdir, write_events=jax.process_index() == 0)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams(_flat_hparams(config))
  logging.info('%s AlexNet, %s parameters, computing in %s; training from step %d to %d.',
               config.model, f'{models.count_params(state.params):,}',
               platform.compute_dtype(config.dtype), start_step, num_steps)

  train_step = parallel.make_train_step(model, aug, config.seed, mesh)
  eval_step = parallel.make_eval_step(model, aug, mesh, config.eval_ten_crop)
  profile = _Profile(workdir, start_step + config.profile_first_step, config.profile_steps)
  put = to_devices.for_config(config, mesh, batch_spec, dataset.jpeg_store)
  metrics_log = _MetricsLog(writer, steps_per_epoch,
                            progress.Progress(start_step, num_steps, config.global_batch_size))
  batches = dataset.train_batches(start_step, put=put, split=put.decode_split,
                                  on_skip=metrics_log.skipped)
  preemption = preemption_lib.PreemptionWatch()
  save_clock = _SaveClock(config.checkpoint_every_minutes)
  eval_metrics = {}

  def run_evaluation(step: int) -> bool:
    """Evaluates the state of `step` and acts on it: summaries, the learning-rate schedule,
    the best checkpoint. False if a preemption cut the evaluation short."""
    nonlocal state, best_error, best_step, eval_metrics
    wall, cpu = time.monotonic(), time.thread_time()
    metrics = evaluate.evaluate(eval_step, [state.params], dataset, put,
                                should_stop=preemption.should_stop)
    metrics_log.exclude(time.monotonic() - wall, time.thread_time() - cpu)
    if metrics is None:
      return False
    eval_metrics = metrics
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    if rate_schedule is None and plateau.update(metrics['top1_error']):
      logging.info('Validation top-1 error has not improved for %d evaluations: learning '
                   'rate divided by %g, now %g.', plateau.patience, 1 / plateau.factor,
                   plateau.learning_rate)
      state = state.replace(opt_state=optim.set_learning_rate(state.opt_state,
                                                              plateau.learning_rate))
    if best_error is None or metrics['top1_error'] < best_error:
      best_error, best_step = metrics['top1_error'], step
      if config.keep_best_checkpoint:
        logging.info('Lowest validation top-1 error so far, %.4f: checkpoint %s is kept while '
                     'it stays the lowest.', best_error, checkpoints.path(step))
    return True

  def save(pending: bool) -> None:
    checkpoints.save(state, {'plateau': plateau.state_dict(), 'best_top1_error': best_error,
                             'best_step': best_step, 'pending_eval': pending})
    save_clock.saved()

  def stop_for_damage(error: errors.DamagedRecordError, step: int,
                      evaluating: bool) -> errors.DamagedRecordError:
    """`error` as the run's end, with the state of `step` saved first, as a stop saves it (a
    resumed run evaluates it first if its evaluation read the record)."""
    reader = ('whose evaluation reads it' if evaluating else
              f'before step {step + 1}, which reads it')
    if jax.process_count() == 1:
      save(pending=evaluating)
      checkpoints.wait()
      saved = f'checkpoint {checkpoints.path(step)} saved'
    else:   # the other hosts read on, and would wait for this one's part of a save forever
      newest = checkpoints.latest_step()
      saved = ('nothing saved, as this host alone reads it: the newest checkpoint is ' +
               (checkpoints.path(newest) if newest is not None else 'none'))
    return errors.DamagedRecordError(
        error.store, error.split, error.shard, error.shard_index, error.split_index, error.cause,
        f'Stopped at step {step}, {reader}; {saved}. {error.remedy}\nThen run the same '
        'command to resume.')

  try:
    if pending_eval:
      logging.info('The run stopped during the evaluation of step %d: evaluating it first.',
                   start_step)
      try:
        evaluated = run_evaluation(start_step)
      except errors.DamagedRecordError as e:
        raise stop_for_damage(e, start_step, evaluating=True) from None
      if not evaluated:
        logging.warning('Stopped again during the evaluation of step %d; checkpoint %s still '
                        'holds it. Run the same command to resume.', start_step,
                        checkpoints.path(start_step))
        checkpoints.wait()
        return eval_metrics
    for step in range(start_step + 1, num_steps + 1):
      profile(step)
      try:
        with preemption.waiting():
          batch = next(batches)
      except preemption_lib.StopWhileWaiting:
        # The state is that of the step before: saved as it is, resumed with this batch.
        metrics_log.flush(learning_rate(step - 1), checkpoints, report=False)
        save(pending=False)
        logging.warning('Stopped at step %d; checkpoint %s saved. Run the same command to '
                        'resume.', step - 1, checkpoints.path(step - 1))
        break
      except errors.DamagedRecordError as e:
        metrics_log.flush(plateau.learning_rate, checkpoints, report=False)
        raise stop_for_damage(e, step - 1, evaluating=False) from None
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_step(state, batch)
      del batch
      metrics_log.add(step, metrics)  # device arrays: no host sync until they are logged
      last, stop = step == num_steps, preemption.should_stop()
      log_now = step % config.log_every_steps == 0
      evaluate_now = step % eval_every == 0 or last
      save_now = (step % config.checkpoint_every_steps == 0 or evaluate_now or stop or
                  (log_now and save_clock.due()))
      if log_now or save_now:
        # Before anything is saved, every step since the last check must have been finite.
        metrics_log.flush(learning_rate(step), checkpoints, report=log_now or last)
      # A preemption before or during the evaluation saves first; the resumed run
      # evaluates this step before it trains on.
      try:
        evaluated = evaluate_now and not stop and run_evaluation(step)
      except errors.DamagedRecordError as e:
        raise stop_for_damage(e, step, evaluating=True) from None
      stop = stop or (evaluate_now and not evaluated)
      if save_now:
        save(pending=evaluate_now and not evaluated)
      if stop and not (last and evaluated):
        logging.warning('Stopped at step %d%s; checkpoint %s saved. Run the same command to '
                        'resume.', step, ' before its evaluation' if evaluate_now and
                        not evaluated else '', checkpoints.path(step))
        break
    checkpoints.wait()   # the last save written whole before the run says it ended
    writer.flush()
  except errors.StorageError as e:
    newest = checkpoints.latest_step()
    resumes = (checkpoints.path(newest) if newest is not None else
               'step 0: no checkpoint is complete yet')
    raise errors.StorageError(f'{e} Then run the same command. It resumes from {resumes}.') from e
  finally:
    batches.close()
    profile.stop()
    preemption.close()
    checkpoints.close()
    try:
      writer.close()
    except errors.StorageError as e:   # stopping anyway: say so, keep the first error
      logging.error('%s', e)
  return eval_metrics


def _check_space(root, state, checkpoints_needed: int) -> None:
  """Warns at start-up when the workdir has room for fewer than `checkpoints_needed`."""
  size, free = checkpointing.checkpoint_bytes(state), checkpointing.free_bytes(root)
  if free is not None and free < checkpoints_needed * size:
    logging.warning(
        'The workdir %s has %.2f GiB free; %d checkpoints of %.2f GiB (keep_checkpoints + 2: '
        'the newest ones, the best and one being written) need %.2f GiB. Free space, or lower '
        '--config.keep_checkpoints, before a save fails.', root, free / 2**30,
        checkpoints_needed, size / 2**30, checkpoints_needed * size / 2**30)


class _SaveClock:
  """Whether `minutes` have passed since the last save; every host takes process 0's answer,
  since a save is a step all hosts take together."""

  def __init__(self, minutes: float):
    self._seconds, self._last = minutes * 60, time.monotonic()

  def saved(self) -> None:
    self._last = time.monotonic()

  def due(self) -> bool:
    if self._seconds <= 0:
      return False
    due = time.monotonic() - self._last >= self._seconds
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
    return due


class _MetricsLog:
  """Training metrics kept on the devices between logs, then checked, averaged and written
  with the progress since the last log."""

  def __init__(self, writer, steps_per_epoch: int, progress_: progress.Progress):
    self._writer, self._steps_per_epoch, self._progress = writer, steps_per_epoch, progress_
    self._pending = []
    # Damaged records skipped, by step: told by the loader's thread, ahead of the steps.
    self._skips, self._skips_told = collections.Counter(), queue.SimpleQueue()

  def skipped(self, batch_number: int, count: int) -> None:
    self._skips_told.put((batch_number + 1, count))   # batch b is step b + 1's

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def exclude(self, wall_seconds: float, cpu_seconds: float) -> None:
    """Leaves time spent outside training (evaluation) out of the rates."""
    self._progress.exclude(wall_seconds, cpu_seconds)

  def flush(self, learning_rate: float, checkpoints, report: bool = True) -> None:
    """Checks every pending step; with `report`, writes their means and the progress."""
    if not self._pending:
      return
    steps = [s for s, _ in self._pending]
    host = jax.device_get([m for _, m in self._pending])
    for step, m in zip(steps, host):
      if not m['finite']:
        latest = checkpoints.latest_step()
        raise errors.DivergenceError(
            f'Training diverged: the loss or a gradient is not finite at step {step} '
            f'(loss {float(m["loss"])}, gradient norm {float(m["grad_norm"])}). Nothing after '
            'it was saved; the last good checkpoint is '
            f'{checkpoints.path(latest) if latest is not None else "none (no checkpoint yet)"}. '
            'Lower --config.learning_rate, or train in float32, and run again.')
    if not report:
      return
    step = steps[-1]
    summary = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != 'finite'}
    while not self._skips_told.empty():
      told_step, count = self._skips_told.get()
      self._skips[told_step] += count
    summary['skipped_records'] = sum(self._skips.pop(s, 0) for s in steps)
    summary.update(self._progress.report(step))
    summary['learning_rate'] = learning_rate
    summary['epoch'] = step / self._steps_per_epoch
    self._writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})
    self._pending = []


class _Profile:
  """A trace of `steps` steps from `first` on for TensorBoard's profiler (process 0 only)."""

  def __init__(self, workdir: str, first: int, steps: int):
    self._workdir, self._first, self._last = workdir, first, first + steps
    self._enabled, self._running = steps > 0 and jax.process_index() == 0, False

  def __call__(self, step: int) -> None:
    if not self._enabled:
      return
    if step == self._first:
      jax.profiler.start_trace(self._workdir)
      self._running = True
    elif step == self._last:
      self.stop()

  def stop(self) -> None:
    if self._running:
      jax.profiler.stop_trace()
      self._running = False
      logging.info('Profile of steps %d-%d written to %s.', self._first, self._last - 1,
                   self._workdir)


def _flat_hparams(config) -> dict:
  flat = {}

  def walk(prefix, value):
    if hasattr(value, 'items'):
      for k, v in value.items():
        walk(f'{prefix}{k}.', v)
    else:
      flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

  walk('', config)
  return flat
