"""train_and_evaluate: the training loop, its evaluations, checkpoints and summaries.

Read down: `train_and_evaluate` sets up a `_Run` (the data, the model, its
state on the mesh, the checkpoints) and runs its loop. Each step trains on one
batch (`steps.py` holds what a step computes); `_due_after` then says
what else that step brings (a log, an evaluation, a save, a stop), and the
loop does it. The loop's own state (`saved_state.LoopState`) is saved in each
checkpoint beside the train state, so a resumed run goes on as if it had never
stopped.
"""

import dataclasses
import logging
import math
import time

import jax
import jax.numpy as jnp
from clu import parameter_overview
from flax.training import train_state

from alexnet_jax import config_checks, data, errors, models, optim
from alexnet_jax.data import decode_share, to_devices
from alexnet_jax.loop import (evaluate, progress_line, saved_state, stopping, summaries,
                              timers, train_metrics)
from alexnet_jax.parallel import backend, host_faults, placement, steps
from alexnet_jax.workdir import (checkpointing, color_stats, init_from, lock, model_record,
                                 storage)


def _steps(steps: int, epochs: float, steps_per_epoch: int) -> int:
  """A duration given in steps (if positive) or else in epochs, in steps."""
  return int(steps) if steps > 0 else max(1, int(math.ceil(epochs * steps_per_epoch)))


def create_model(config, num_classes: int) -> models.AlexNet:
  # A config recorded before the rewrites and the paper's choices were fields (an older
  # workdir's model.json) gets the first form of each.
  options = {field: config.get(field, choices[0]) for field, choices in models.OPTIONS.items()}
  return models.AlexNet(num_classes=num_classes, variant=config.model, width=config.width,
                        dropout_rate=config.dropout_rate,
                        dtype=jnp.dtype(backend.compute_dtype(config.dtype)),
                        initialization=config.initialization, **options,
                        **models.choices_of(config))


def create_train_state(config, model, mesh, rate_schedule=None) -> train_state.TrainState:
  """The initial state of the paper's optimiser, created directly on every device of the mesh.

  `rate_schedule`: the run's `optim.schedule`, which sets the rate of each step; without it
  the rate stays as set (the same structure: a state to restore a checkpoint into).
  """
  tx = optim.paper_sgd(config.learning_rate, config.momentum, config.weight_decay,
                       rate_schedule)
  return placement.init_train_state(model, tx, config.image_size, config.seed, mesh)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates as `config` says, resuming from the newest checkpoint in `workdir`.

  Returns the last evaluation's metrics.
  """
  run = _Run(config, workdir)
  try:
    return run.loop()
  except errors.StorageError as e:
    newest = run.checkpoints.latest_step()
    resumes = (run.checkpoints.path(newest) if newest is not None else
               'step 0: no checkpoint is complete yet')
    raise errors.StorageError(f'{e} Then run the same command. It resumes from {resumes}.') from e
  finally:
    run.close()


def _restore(config, checkpoints: checkpointing.Checkpoints, state):
  """(the state to start from, the loop state saved with it): the newest checkpoint's, else
  `state` with `init_from`'s parameters where it names a workdir, and None."""
  restored = checkpoints.restore(state)
  if restored is not None:
    if config.init_from:
      logging.info('Resuming from this run\'s own checkpoint; --config.init_from is not read.')
    return restored
  if config.init_from:
    state = state.replace(params=init_from.initial_params(config, state.params))
  return state, None


@dataclasses.dataclass(frozen=True)
class Due:
  """What a step brings once it has trained."""
  log: bool        # the training metrics and the progress, written
  evaluate: bool   # an evaluation on the validation split
  save: bool       # a checkpoint
  stop: bool       # a stop was asked for (a preemption, Ctrl-C): save and end
  last: bool       # the run's last step


def _due_after(step: int, num_steps: int, eval_every: int, config, stop_asked: bool,
               save_clock: timers.SaveClock) -> Due:
  last = step == num_steps
  log = step % config.log_every_steps == 0
  evaluate_now = step % eval_every == 0 or last
  # Every evaluation is saved (the best checkpoint is one of them), and so is a stop. The
  # clock is read last, only at logs: on several hosts reading it is a step they all take.
  save = (step % config.checkpoint_every_steps == 0 or evaluate_now or stop_asked or
          (log and save_clock.due()))
  return Due(log=log, evaluate=evaluate_now, save=save, stop=stop_asked, last=last)


class _Run:
  """One training run: what `train_and_evaluate` sets up, and its loop."""

  def __init__(self, config, workdir: str):
    self.config = config
    config_checks.check(config, jax.device_count(), jax.local_device_count())
    mesh = placement.make_mesh(model_axis_size=config.model_axis_size)
    self.lock = lock.hold(workdir)
    try:
      self._set_up(config, workdir, mesh)
    except BaseException:
      self.lock.release()
      raise

  def _set_up(self, config, workdir: str, mesh) -> None:
    """Everything that may refuse the run, then `_start_writing`: a refused run leaves the
    workdir as it found it."""
    config_checks.check_workdir_shared(workdir)
    init_from.check(config)
    aug = color_stats.augmentation(config, workdir)
    # On several hosts, one host's damaged record stops them all at the same batch.
    self.dataset = dataset = host_faults.agreed(data.create(
        config, config.global_batch_size, jax.process_index(), jax.process_count()))
    steps_per_epoch = dataset.steps_per_epoch
    self.num_steps = _steps(config.num_train_steps, config.num_epochs, steps_per_epoch)
    self.eval_every = _steps(config.eval_every_steps, config.eval_every_epochs, steps_per_epoch)
    config_checks.check_classes(config, dataset.num_classes)
    backend.check_backend(dataset.train_examples, config.allow_cpu)
    logging.info('Training on %s; a mesh of %s; %d train examples, %d steps per epoch, %d '
                 'steps; %d validation examples.', backend.describe(), dict(mesh.shape),
                 dataset.train_examples, steps_per_epoch, self.num_steps,
                 dataset.eval_examples)

    model = create_model(config, dataset.num_classes)
    self.rate_schedule = optim.schedule(config.lr_schedule, config.learning_rate,
                                        self.num_steps)
    self.loop_state = saved_state.LoopState(
        optim.PlateauController(config.learning_rate, **config.plateau),
        global_batch_size=config.global_batch_size, choices=saved_state.choices(config))
    self.checkpoints = checkpointing.Checkpoints(
        str(checkpointing.folder(workdir)), keep=config.keep_checkpoints,
        best_step=lambda: self.loop_state.best_step if config.keep_best_checkpoint else None)
    self.state, saved = _restore(config, self.checkpoints,
                                 create_train_state(config, model, mesh, self.rate_schedule))
    self.start_step = int(jax.device_get(self.state.step))
    if saved is not None:
      self.loop_state.resume(saved, self.start_step, dataset.train_examples, self.num_steps)
    checkpointing.check_space(storage.workdir_path(workdir), self.state,
                              config.keep_checkpoints + 2)
    self.train_step = steps.make_train_step(model, aug, config.seed, mesh)
    self.eval_step = steps.make_eval_step(model, aug, mesh, config.eval_ten_crop)
    self.put = to_devices.for_config(config, mesh, placement.batch_spec(model, mesh),
                                     dataset.jpeg_store)
    self.loop_state.decode_host_rows = decode_share.settle(
        self.put, dataset, self.start_step, self.loop_state.decode_host_rows)
    self._start_writing(workdir)

  def _start_writing(self, workdir: str) -> None:
    """The run goes on: its record, its summaries, its batches."""
    config, dataset = self.config, self.dataset
    if jax.process_index() == 0:   # what the workdir holds, for the commands that read it
      model_record.write(workdir, config, dataset.class_names)
    self.writer = summaries.Summaries(workdir, write_events=jax.process_index() == 0)
    if self.start_step == 0:
      parameter_overview.log_parameter_overview(self.state.params)
      self.writer.write_hparams(summaries.flat_hparams(config))
    logging.info('%s AlexNet, %s parameters, computing in %s; training from step %d to %d.',
                 config.model, f'{models.count_params(self.state.params):,}',
                 backend.compute_dtype(config.dtype), self.start_step, self.num_steps)
    self.profile = timers.ProfileTrace(workdir, self.start_step + config.profile_first_step,
                                       config.profile_steps)
    self.metrics_log = train_metrics.MetricsLog(
        self.writer, dataset.steps_per_epoch,
        progress_line.Progress(self.start_step, self.num_steps, config.global_batch_size))
    self.batches = dataset.train_batches(self.start_step, put=self.put,
                                         split=self.put.decode_split,
                                         on_skip=self.metrics_log.skipped)
    self.preemption = stopping.PreemptionWatch()
    self.save_clock = timers.SaveClock(config.checkpoint_every_minutes)
    self.eval_metrics = {}

  def learning_rate(self, step: int) -> float:
    """The rate step `step` (counted from 1) trained with."""
    if self.rate_schedule is None:
      return self.loop_state.plateau.learning_rate
    return float(self.rate_schedule(step - 1))

  def loop(self) -> dict:
    """Trains from the start step to the last, or to a stop; the last evaluation's metrics."""
    if self.loop_state.pending_eval and not self._evaluate_pending():
      return self.eval_metrics
    for step in range(self.start_step + 1, self.num_steps + 1):
      if not self._train(step):
        break
      due = _due_after(step, self.num_steps, self.eval_every, self.config,
                       self.preemption.should_stop(), self.save_clock)
      if due.log or due.save:
        # Before anything is saved, every step since the last check must have been finite.
        self.metrics_log.check(self.checkpoints)
      if due.log or due.last:
        self.metrics_log.write(self.learning_rate(step))
      # A stop before or during the evaluation saves first; the resumed run evaluates this
      # step before it trains on.
      evaluated = due.evaluate and not due.stop and self._evaluate_or_stop(step)
      cut_short = due.evaluate and not evaluated
      if due.save:
        self._save(pending_eval=cut_short)
      if due.stop or cut_short:
        logging.warning('Stopped at step %d%s; checkpoint %s saved. Run the same command to '
                        'resume.', step, ' before its evaluation' if cut_short else '',
                        self.checkpoints.path(step))
        break
    self.checkpoints.wait()   # the last save written whole before the run says it ended
    self.writer.flush()
    return self.eval_metrics

  def _train(self, step: int) -> bool:
    """Trains step `step` on its batch; False if a stop came while waiting for the batch
    (the state of the step before is saved, and resumed with this batch)."""
    self.profile(step)
    try:
      with self.preemption.waiting():
        batch = next(self.batches)
    except stopping.StopWhileWaiting:
      self.metrics_log.check(self.checkpoints)
      self._save(pending_eval=False)
      logging.warning('Stopped at step %d; checkpoint %s saved. Run the same command to '
                      'resume.', step - 1, self.checkpoints.path(step - 1))
      return False
    except errors.DamagedRecordError as e:
      self.metrics_log.check(self.checkpoints)
      raise self._stop_for_damage(e, step - 1, evaluating=False) from None
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      self.state, metrics = self.train_step(self.state, batch)
    del batch
    self.metrics_log.add(step, metrics)  # device arrays: no host sync until they are logged
    return True

  def _evaluate_pending(self) -> bool:
    """Evaluates the restored step, saved before its evaluation ended; False if stopped
    again."""
    step = self.start_step
    logging.info('The run stopped during the evaluation of step %d: evaluating it first.', step)
    if self._evaluate_or_stop(step):
      return True
    logging.warning('Stopped again during the evaluation of step %d; checkpoint %s still '
                    'holds it. Run the same command to resume.', step,
                    self.checkpoints.path(step))
    self.checkpoints.wait()
    return False

  def _evaluate_or_stop(self, step: int) -> bool:
    """`_evaluate(step)`; a damaged validation record ends the run, its step saved."""
    try:
      return self._evaluate(step)
    except errors.DamagedRecordError as e:
      raise self._stop_for_damage(e, step, evaluating=True) from None

  def _evaluate(self, step: int) -> bool:
    """Evaluates the state of `step` and acts on it: summaries, the learning-rate schedule,
    the best checkpoint. False if a preemption cut the evaluation short."""
    wall, cpu = time.monotonic(), time.thread_time()
    metrics = evaluate.evaluate(self.eval_step, [self.state.params], self.dataset, self.put,
                                should_stop=self.preemption.should_stop)
    self.metrics_log.exclude(time.monotonic() - wall, time.thread_time() - cpu)
    if metrics is None:
      return False
    self.eval_metrics = metrics
    self.writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    loop_state, error = self.loop_state, metrics['top1_error']
    plateau = loop_state.plateau
    if self.rate_schedule is None and plateau.update(error):
      logging.info('Validation top-1 error has not improved for %d evaluations: learning '
                   'rate divided by %g, now %g.', plateau.patience, 1 / plateau.factor,
                   plateau.learning_rate)
      self.state = self.state.replace(
          opt_state=optim.set_learning_rate(self.state.opt_state, plateau.learning_rate))
    if loop_state.best_top1_error is None or error < loop_state.best_top1_error:
      loop_state.best_top1_error, loop_state.best_step = error, step
      if self.config.keep_best_checkpoint:
        logging.info('Lowest validation top-1 error so far, %.4f: checkpoint %s is kept while '
                     'it stays the lowest.', error, self.checkpoints.path(step))
    return True

  def _save(self, pending_eval: bool) -> None:
    if not steps.state_is_finite(self.state):   # an update overflowed: keep the last save
      raise train_metrics.diverged(
          int(jax.device_get(self.state.step)),
          'the update of the parameters or of the optimiser state is not finite', self.checkpoints)
    self.loop_state.pending_eval = pending_eval
    waited = self.checkpoints.save(self.state, self.loop_state.saved())
    if waited is not None:   # what an asynchronous save costs the step
      self.writer.write_scalars(int(jax.device_get(self.state.step)),
                                {'train/checkpoint_wait_s': waited})
    self.save_clock.saved()

  def _stop_for_damage(self, error: errors.DamagedRecordError, step: int,
                       evaluating: bool) -> errors.DamagedRecordError:
    """`error` as the run's end, with the state of `step` saved first, as a stop saves it (a
    resumed run evaluates it first if its evaluation read the record)."""
    reader = ('whose evaluation reads it' if evaluating else
              f'before step {step + 1}, which reads it')
    self._save(pending_eval=evaluating)   # on several hosts, every host has agreed to stop
    self.checkpoints.wait()
    return host_faults.tagged_as(error, errors.DamagedRecordError(
        error.store, error.split, error.shard, error.shard_index, error.split_index, error.cause,
        f'Stopped at step {step}, {reader}; checkpoint {self.checkpoints.path(step)} saved. '
        f'{error.remedy}\nThen run the same command to resume.'))

  def close(self) -> None:
    self.batches.close()
    self.profile.stop()
    self.preemption.close()
    self.checkpoints.close()
    try:
      self.writer.close()
    except errors.StorageError as e:   # stopping anyway: say so, keep the first error
      logging.error('%s', e)
    finally:
      self.lock.release()   # the last save written: another run may take the workdir
