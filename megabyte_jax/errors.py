"""Exceptions for user mistakes; each message names the problem.

All derive from `MegabyteError`, so the command-line tools print them as one clean line
instead of a traceback.
"""


class MegabyteError(Exception):
  """Base class of the errors a user can cause and fix."""


class ConfigError(MegabyteError, ValueError):
  """A configuration value is invalid, or a config file is missing."""


class InputError(MegabyteError, ValueError):
  """Model input has the wrong shape, dtype, length or byte values."""


class DataError(MegabyteError, ValueError):
  """The data configuration or the files it names cannot be used."""


class CheckpointError(MegabyteError, RuntimeError):
  """A checkpoint is missing, unreadable, or does not match the configuration."""


class TrainingError(MegabyteError, RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps in a row); the last good
  checkpoint is kept."""


class Preempted(MegabyteError):
  """Training stopped on a signal (SIGTERM, SIGINT) after saving a checkpoint.

  Attributes:
    signum: the signal received. step: the step saved.
  """

  def __init__(self, message: str, signum: int, step: int):
    super().__init__(message)
    self.signum, self.step = signum, step


class WorkdirLocked(MegabyteError, RuntimeError):
  """Another trainer holds the work directory's lock (`DIR/train.lock`)."""


class MissingExtra(MegabyteError, ImportError):
  """A feature needs an optional dependency that is not installed; the message names the
  `pip install 'megabyte-jax[EXTRA]'` that provides it."""
