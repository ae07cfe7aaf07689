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
