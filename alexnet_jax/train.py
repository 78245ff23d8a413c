"""train_and_evaluate: the training loop, its evaluations, checkpoints and summaries."""

import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions
from flax.training import train_state

from alexnet_jax import (checkpointing, color_stats, config_checks, errors, evaluate,
                         input_pipeline, models, optim, parallel)
from alexnet_jax import preemption as preemption_lib


def _steps(steps: int, epochs: float, steps_per_epoch: int) -> int:
  """A duration given in steps (if positive) or else in epochs, in steps."""
  return int(steps) if steps > 0 else max(1, int(math.ceil(epochs * steps_per_epoch)))


def create_model(config, num_classes: int) -> models.AlexNet:
  return models.AlexNet(num_classes=num_classes, variant=config.model, width=config.width,
                        dropout_rate=config.dropout_rate, dtype=jnp.dtype(config.dtype),
                        initialization=config.initialization)


def create_train_state(config, model, mesh) -> train_state.TrainState:
  """The initial state of the paper's optimiser, created directly on every device of the mesh."""
  tx = optim.paper_sgd(config.learning_rate, config.momentum, config.weight_decay)
  return parallel.init_train_state(model, tx, config.image_size, config.seed, mesh)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates as `config` says, resuming from the newest checkpoint in `workdir`.

  Returns the last evaluation's metrics.
  """
  config_checks.check(config, jax.device_count(), jax.local_device_count())
  mesh = parallel.make_mesh(model_axis_size=config.model_axis_size)
  config_checks.check_workdir(workdir)
  config = color_stats.resolve(config, workdir)
  data = input_pipeline.create(config, config.global_batch_size)
  steps_per_epoch = data.train_examples // config.global_batch_size
  num_steps = _steps(config.num_train_steps, config.num_epochs, steps_per_epoch)
  eval_every = _steps(config.eval_every_steps, config.eval_every_epochs, steps_per_epoch)
  config_checks.check_classes(config, data.num_classes)
  logging.info('%d devices on %d hosts, a mesh of %s; %d train examples, %d steps per epoch, '
               '%d steps; %d validation examples.', mesh.size, jax.process_count(),
               dict(mesh.shape), data.train_examples, steps_per_epoch, num_steps,
               data.eval_examples)

  model = create_model(config, data.num_classes)
  batch_spec = parallel.batch_spec(model, mesh)
  state = create_train_state(config, model, mesh)
  plateau = optim.PlateauController(config.learning_rate, **config.plateau)
  root = workdir if '://' in workdir else os.path.abspath(workdir)  # gs://... stays as it is
  checkpoints = checkpointing.Checkpoints(os.path.join(root, 'checkpoints'),
                                          keep=config.keep_checkpoints)
  best = (checkpointing.Checkpoints(os.path.join(root, 'best'), keep=1)
          if config.keep_best_checkpoint else None)
  best_error = None   # the lowest validation top-1 error so far
  restored = checkpoints.restore(state)
  if restored is not None:
    state, loop_state = restored
    plateau.load_state_dict(loop_state['plateau'])
    best_error = loop_state.get('best_top1_error')
  start_step = int(jax.device_get(state.step))

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams(_flat_hparams(config))
  logging.info('%s AlexNet, %s parameters; training from step %d to %d.', config.model,
               f'{models.count_params(state.params):,}', start_step, num_steps)

  train_step = parallel.make_train_step(model, config.mean_rgb, config.std_rgb,
                                          config.seed, mesh)
  eval_step = parallel.make_eval_step(model, config.mean_rgb, config.std_rgb, mesh)
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every_steps)]
  if config.profile_steps > 0 and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                          first_profile=start_step + config.profile_first_step,
                                          logdir=workdir))

  batches = parallel.prefetch_to_mesh(data.train_batches(start_step), mesh, batch_spec)
  metrics_log = _MetricsLog(writer, config.global_batch_size, steps_per_epoch, start_step)
  preemption = preemption_lib.PreemptionWatch()
  eval_metrics = {}
  try:
    for step in range(start_step + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_step(state, next(batches))
      metrics_log.add(step, metrics)  # device arrays: no host sync until they are logged
      for hook in hooks:
        hook(step)
      last, stop = step == num_steps, preemption.should_stop(step)
      evaluate_now = step % eval_every == 0 or last
      save_now = step % config.checkpoint_every_steps == 0 or evaluate_now or stop
      if step % config.log_every_steps == 0 or save_now:
        # Before anything is saved, every step since the last check must have been finite.
        metrics_log.flush(plateau.learning_rate, checkpoints)

      if evaluate_now:
        eval_start = time.monotonic()
        eval_metrics = evaluate.evaluate(eval_step, [state.params], data, mesh, batch_spec)
        writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
        if plateau.update(eval_metrics['top1_error']):
          logging.info('Validation top-1 error has not improved for %d evaluations: learning '
                       'rate divided by %g, now %g.', plateau.patience, 1 / plateau.factor,
                       plateau.learning_rate)
          state = state.replace(opt_state=optim.set_learning_rate(state.opt_state,
                                                                  plateau.learning_rate))
        if best_error is None or eval_metrics['top1_error'] < best_error:
          best_error = eval_metrics['top1_error']
          if best is not None:
            best.save(state, {'plateau': plateau.state_dict(), 'eval': eval_metrics})
            logging.info('Lowest validation top-1 error so far, %.4f: kept in %s.', best_error,
                         best.path(step))
        metrics_log.exclude(time.monotonic() - eval_start)

      if save_now:
        checkpoints.save(state, {'plateau': plateau.state_dict(), 'best_top1_error': best_error})
      if stop and not last:
        logging.warning('Stopped at step %d; checkpoint %s saved. Run the same command to '
                        'resume.', step, checkpoints.path(step))
        break
  finally:
    preemption.close()
    checkpoints.close()
    if best is not None:
      best.close()
    writer.flush()
  return eval_metrics


class _MetricsLog:
  """Training metrics kept on the devices between logs, then checked, averaged and written."""

  def __init__(self, writer, global_batch_size: int, steps_per_epoch: int, step: int):
    self._writer, self._batch, self._steps_per_epoch = writer, global_batch_size, steps_per_epoch
    self._pending, self._since_step, self._since_time = [], step, time.monotonic()

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def exclude(self, seconds: float) -> None:
    """Leaves time spent outside training (evaluation) out of images/s."""
    self._since_time += seconds

  def flush(self, learning_rate: float, checkpoints) -> None:
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
    step, now = steps[-1], time.monotonic()
    summary = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != 'finite'}
    summary['images_per_sec'] = (step - self._since_step) * self._batch / (now - self._since_time)
    summary['learning_rate'] = learning_rate
    summary['epoch'] = step / self._steps_per_epoch
    self._writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})
    self._pending, self._since_step, self._since_time = [], step, now


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
