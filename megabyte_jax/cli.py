"""Shared start-up of the command-line tools (train, evaluate, sample)."""

from absl import flags, logging


def quiet_logging() -> None:
  """Shows warnings and errors only (Orbax logs every save at INFO through absl), unless
  the user passed `--verbosity`."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
