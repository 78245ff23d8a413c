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
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import checkpointing, config_checks, evaluate, input_pipeline, models, optim, parallel


def _steps(steps: int, epochs: float, steps_per_epoch: int) -> int:
  """A duration given in steps (if positive) or else in epochs, in steps."""
  return int(steps) if steps > 0 else max(1, int(math.ceil(epochs * steps_per_epoch)))


def create_model(config, num_classes: int) -> models.AlexNet:
  return models.AlexNet(num_classes=num_classes, variant=config.model, width=config.width,
                        dropout_rate=config.dropout_rate, dtype=jnp.dtype(config.dtype))


def create_train_state(config, model, mesh) -> train_state.TrainState:
  """The initial state, created directly on every device of the mesh."""
  tx = optim.paper_sgd(config.learning_rate, config.momentum, config.weight_decay)

  def init():
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    params = model.init(jax.random.key(config.seed), images, train=False)['params']
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def _mean_metrics(metrics: list) -> dict:
  host = jax.device_get(metrics)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates as `config` says, resuming from the newest checkpoint in `workdir`.

  Returns the last evaluation's metrics.
  """
  mesh = parallel.make_mesh()
  config_checks.check(config, mesh.size)
  data = input_pipeline.create(config, config.global_batch_size)
  steps_per_epoch = data.train_examples // config.global_batch_size
  num_steps = _steps(config.num_train_steps, config.num_epochs, steps_per_epoch)
  eval_every = _steps(config.eval_every_steps, config.eval_every_epochs, steps_per_epoch)
  logging.info('%d devices on %d hosts; %d train examples, %d steps per epoch, %d steps; '
               '%d validation examples.', mesh.size, jax.process_count(), data.train_examples,
               steps_per_epoch, num_steps, data.eval_examples)

  model = create_model(config, data.num_classes)
  state = create_train_state(config, model, mesh)
  plateau = optim.PlateauController(config.learning_rate, **config.plateau)
  checkpoints = checkpointing.Checkpoints(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                          keep=config.keep_checkpoints)
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, loop_state = restored
    plateau.load_state_dict(loop_state['plateau'])
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

  batches = parallel.prefetch_to_mesh(data.train_batches(start_step), mesh)
  pending_metrics, log_time, log_step = [], time.monotonic(), start_step
  eval_metrics = {}
  for step in range(start_step + 1, num_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, metrics = train_step(state, next(batches))
    pending_metrics.append(metrics)  # device arrays: no host sync until they are logged
    for hook in hooks:
      hook(step)
    last = step == num_steps

    if step % config.log_every_steps == 0 or last:
      summary = _mean_metrics(pending_metrics)
      now = time.monotonic()
      summary['images_per_sec'] = (step - log_step) * config.global_batch_size / (now - log_time)
      summary['learning_rate'] = plateau.learning_rate
      summary['epoch'] = step / steps_per_epoch
      writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})
      pending_metrics, log_time, log_step = [], now, step

    evaluated = step % eval_every == 0 or last
    if evaluated:
      eval_start = time.monotonic()
      eval_metrics = evaluate.evaluate(eval_step, state.params, data, mesh)
      writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
      if plateau.update(eval_metrics['top1_error']):
        logging.info('Validation top-1 error has not improved for %d evaluations: learning '
                     'rate divided by %g, now %g.', plateau.patience, 1 / plateau.factor,
                     plateau.learning_rate)
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state,
                                                                plateau.learning_rate))
      log_time += time.monotonic() - eval_start  # images/s counts training time only

    if step % config.checkpoint_every_steps == 0 or evaluated:
      checkpoints.save(state, {'plateau': plateau.state_dict()})

  checkpoints.save(state, {'plateau': plateau.state_dict()})
  checkpoints.wait()
  checkpoints.close()
  writer.flush()
  return eval_metrics


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
