"""A fault crosses from the host that met it to the others whole: the same error, or one line."""

from alexnet_jax import errors
from alexnet_jax.parallel import host_faults


def test_a_fault_crosses_to_the_other_hosts_whole():
  damaged = errors.DamagedRecordError('/s', 'train', 'train-1', 3, 11, 'hash mismatch', 'Redo.')
  copied = host_faults._decode(host_faults._encode(damaged))
  assert type(copied) is errors.DamagedRecordError and str(copied) == str(damaged)
  assert (copied.shard, copied.shard_index, copied.split_index) == ('train-1', 3, 11)
  bug = host_faults._decode(host_faults._encode(KeyError('conv9')))
  assert type(bug) is errors.HostFaultError
  assert str(bug) == "KeyError: 'conv9' (its log has the traceback)"
