"""Errors that mean the user has something to fix; `main.py` prints them without a traceback."""


class UserFacingError(Exception):
  """A problem with the run's configuration or data, with a message that says the fix."""


class ConfigError(UserFacingError):
  """A config field has a value the trainer cannot run with."""


class DataError(UserFacingError):
  """The dataset asked for cannot be read."""


class DivergenceError(UserFacingError):
  """The loss or a gradient stopped being finite."""


class CheckpointError(UserFacingError):
  """A checkpoint could not be read or written for a reason other than damage to it."""


class StorageError(UserFacingError):
  """The workdir's storage refused a write: full, read-only, or no permission."""


class DamagedRecordError(DataError):
  """A record of a prepared store cannot be read or decoded: the store, the shard, the record.

  Raised where the record is read, often in a decoding thread or process; rebuilt from its
  fields wherever it is caught, so that it reaches the trainer whole.
  """

  def __init__(self, store: str, split: str, shard: str, shard_index: int, split_index: int,
               cause: str, remedy: str = ''):
    self.store, self.split, self.shard = store, split, shard
    self.shard_index, self.split_index, self.cause, self.remedy = (shard_index, split_index,
                                                                   cause, remedy)
    super().__init__(f'{self.description} {remedy}'.strip())

  @property
  def description(self) -> str:
    return (f'The store {self.store} is damaged: record {self.shard_index} of its shard '
            f'{self.shard} (record {self.split_index} of the split {self.split!r}) cannot be '
            f'read ({self.cause}).')

  def __reduce__(self):
    return type(self), (self.store, self.split, self.shard, self.shard_index, self.split_index,
                        self.cause, self.remedy)


class HostFaultError(UserFacingError):
  """Another host of a multi-host job failed, for a reason its own log gives in full."""
