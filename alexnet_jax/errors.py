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
