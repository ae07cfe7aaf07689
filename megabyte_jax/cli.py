"""Shared start-up of the command-line tools (train, evaluate, sample, plot): their
`--help`, a quiet log, one-line errors for bad flags."""

import os
import sys
from typing import Optional, Sequence, TextIO

from absl import flags, logging

# What asks for a command's help (absl's short-help spellings); `--helpfull` stays absl's.
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def wants_help(argv: Sequence[str]) -> bool:
  """Whether the command line asks for `--help` (before any `--`)."""
  for arg in argv[1:]:
    if arg == "--":
      return False
    if arg in HELP_FLAGS:
      return True
  return False


def without_help(argv: Sequence[str]) -> list[str]:
  """`argv` without its help flags."""
  return [arg for arg in argv if arg not in HELP_FLAGS]


def flags_help(module_name: str, flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The flags defined by the module `module_name` (its `__name__`; absl files a `python -m`
  module's flags under `sys.argv[0]`), formatted by absl: name, help text, default."""
  if module_name == "__main__":
    module_name = sys.argv[0]
  text = flag_values.module_help(module_name).strip("\n")
  first, _, rest = text.partition("\n")
  return rest if first.rstrip(":") == module_name else text


def print_help(guide: str, module_name: str, flag_values: flags.FlagValues = flags.FLAGS,
               stream: Optional[TextIO] = None) -> None:
  """Prints a command's `--help` to `stream` (default stdout): its `guide` (usage and what
  it does), then the flags that the module `module_name` defines (absl's own and JAX's are
  left to `--helpfull`)."""
  write_out(guide.strip("\n") + "\n\nflags:\n" + flags_help(module_name, flag_values)
            + "\n\n--helpfull lists every flag, absl's and JAX's included.\n", stream)


def write_out(text: str, stream: Optional[TextIO] = None) -> None:
  """Writes `text` to `stream` (default stdout) and flushes; a reader that closed the pipe
  (`megabyte-train --help_config | head`) ends the command quietly, not with a traceback."""
  stream = sys.stdout if stream is None else stream
  try:
    stream.write(text)
    stream.flush()
  except BrokenPipeError:
    if stream is sys.stdout:   # no second error when Python flushes stdout at exit
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


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
