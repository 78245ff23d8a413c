"""Trains and evaluates AlexNet: `python main.py --config=configs/alexnet.py --workdir=DIR`."""

import sys

from absl import app, flags, logging

from alexnet_jax import command_line, errors

FLAGS = flags.FLAGS
command_line.define_config_flag('Config file, e.g. configs/alexnet.py:demo.')
flags.DEFINE_string('workdir', None, 'Checkpoints and TensorBoard summaries go here; a run '
                    'started again on the same workdir resumes.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, to join a multi-host '
                    'job by hand (TPU pods, SLURM and Open MPI jobs are found without it).')
flags.DEFINE_integer('num_processes', None, 'With --coordinator_address: number of processes.')
flags.DEFINE_integer('process_id', None, 'With --coordinator_address: this process\'s index.')
flags.DEFINE_integer('heartbeat_timeout_seconds', 100, 'On several hosts: how long a silent '
                     'host may go unnoticed before the others stop with an error.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here, not above: the data loader's worker processes start by importing this
  # file, and need none of JAX's training stack or TensorFlow.
  from alexnet_jax.workdir import orbax_logs
  orbax_logs.keep_warnings()
  from alexnet_jax import train
  from alexnet_jax.parallel import distributed, host_faults
  try:
    distributed.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id, FLAGS.heartbeat_timeout_seconds)
    host_faults.watch()
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserFacingError as e:
    if host_faults.several_hosts():
      host_faults.stop_job(e)   # every host stops, and says which one failed and why
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:   # a second Ctrl-C: the step and any save in progress are dropped
    message = ('Stopped at once by a second Ctrl-C. Every checkpoint in the workdir is complete; '
               'run the same command to resume from the newest.')
    logging.warning('%s', message)
    print(message, file=sys.stderr, flush=True)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except  (a bug, or a host lost)
    if not host_faults.several_hosts():
      raise
    host_faults.stop_job(e)


if __name__ == '__main__':
  command_line.run(main)
