"""Trains and evaluates AlexNet: `python main.py --config=configs/alexnet.py --workdir=DIR`."""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import errors, parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/alexnet.py:demo.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints and TensorBoard summaries go here; a run '
                    'started again on the same workdir resumes.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, to join a multi-host '
                    'job by hand (TPU pods, SLURM and Open MPI jobs are found without it).')
flags.DEFINE_integer('num_processes', None, 'With --coordinator_address: number of processes.')
flags.DEFINE_integer('process_id', None, 'With --coordinator_address: this process\'s index.')
flags.DEFINE_integer('heartbeat_timeout_seconds', 100, 'On several hosts: how long a silent '
                     'host may go unnoticed before the others stop with an error.')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_orbax(record) -> bool:
  """Orbax logs every stage of every save at INFO; keep its warnings and errors only."""
  # std_logging's levels: absl.logging.WARNING is absl's own number (-1).
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.heartbeat_timeout_seconds)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserFacingError as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
