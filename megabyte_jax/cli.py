"""Shared start-up of the command-line tools (train, evaluate, sample)."""

import sys
from typing import Sequence

from absl import flags, logging


def quiet_logging() -> None:
  """Shows warnings and errors only (Orbax logs every save at INFO through absl), unless
  the user passed `--verbosity`."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses the command line for `app.run(main, flags_parser=parse_flags)`: a bad flag or a
  bad `--config.x.y=` override (an unknown key, a value of the wrong type) exits with one
  line naming it, instead of absl's or ml_collections' traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
  except SyntaxError as e:   # a config file that is not Python (or holds NUL bytes)
    where = f" ({e.filename}, line {e.lineno})" if e.filename else ""
    sys.exit(f"error: cannot load the --config file: {e.msg}{where}")
  except UnicodeDecodeError as e:
    sys.exit(f"error: cannot load the --config file: it is not UTF-8 text ({e.reason} at "
             f"byte {e.start})")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = e.args[0] if e.args else str(e)
    message = str(message).replace("\\n", " ").replace("\\'", "'")
    message = " ".join(message.split())
    while len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]   # KeyError reprs quote their message, sometimes twice
    sys.exit(f"error: bad --config override: {message}")
  except Exception as e:  # pylint: disable=broad-except (e.g. a config file that raises)
    message = " ".join(str(e).split())
    sys.exit(f"error: cannot load the --config file: {type(e).__name__}: {message}")
