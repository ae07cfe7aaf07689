"""Continue a prompt with a trained model, using the KV-cached sampler.

    python -m megabyte_jax.sample --workdir=DIR --prompt="import " --num_bytes=N
    python -m megabyte_jax.sample --workdir=DIR --prompt_file=start.py --output=out.bin

    python -m megabyte_jax.sample --workdir=IMAGE_RUN --prompt= --output=image.png

Loads the configuration written by training and the latest (or `--step`) checkpoint,
continues the prompt (`--prompt`, or the bytes of `--prompt_file`; default: the config's
`sample.prompt`) with `megabyte_jax.generate`, and prints the prompt and continuation as
text (invalid UTF-8 shown as U+FFFD). With `--output` the raw bytes (prompt and
continuation) go to that file instead. `--temperature`, `--top_k`, `--top_p` and `--seed`
control sampling (defaults: the config's `sample` section, nucleus off, seed 0);
`--stop_bytes` ends the continuation after one of the given bytes; `--slide` lets a long
generation slide the context window forward instead of refusing.

Images: for a model trained on images (`data.name=image_folder`), `--output=NAME.png` writes
the prompt and continuation as a PNG of the training images' size, channels and scan order
(`megabyte_jax.data.codecs.bytes_to_image`; missing pixels black), and `--num_bytes`
defaults to what completes one image.

Odd input never gives a traceback: a prompt file is taken byte for byte (any bytes), a
`--prompt` holding bytes that are not UTF-8 (the shell passes them through) is taken as
those bytes, and printing replaces what the terminal's encoding cannot show. User mistakes
(a missing or untrained `--workdir`, an unreadable `--prompt_file`, a negative or huge
`--num_bytes`, bad sampling options) end with one line `error: ...`.

`run_sample(workdir, ...)` does the same from Python (it raises instead of exiting).
Importing this module defines no command-line flags; running it does.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from typing import Any, Optional, Sequence, TextIO

import jax
import numpy as np
from absl import app, flags, logging

from megabyte_jax import cli
from megabyte_jax.cli import parse_flags, quiet_logging
from megabyte_jax.data.local_files import _kind
from megabyte_jax.errors import InputError, MegabyteError
from megabyte_jax.extras import require
from megabyte_jax.inference.generation import generate
from megabyte_jax.training.workdir import load_trained

MAX_TOTAL_BYTES = 2 ** 31 - 1   # positions are int32: prompt + continuation stay below this
MAX_SEED = 2 ** 62              # --seed: well within what jax.random.key takes


def _define_flags() -> None:
  """The command line's flags (defined only when the module runs, so that importing it next
  to `megabyte_jax.train` or `megabyte_jax.evaluate` defines no flag twice)."""
  flags.DEFINE_string("workdir", None, "Training directory (holds config.json).")
  flags.DEFINE_string("prompt", None, "Prompt text (UTF-8; bytes that are not UTF-8 are "
                      "taken as they are); default: config.sample.prompt.")
  flags.DEFINE_string("prompt_file", None, "Read the prompt bytes from this file.")
  flags.DEFINE_integer("num_bytes", None, "Bytes to generate; default: config.sample.num_bytes.")
  flags.DEFINE_string("output", None, "Write the bytes (prompt + continuation) to this file "
                      "instead of printing them; NAME.png writes an image (models trained on "
                      "images).")
  flags.DEFINE_float("temperature", None, "Softmax temperature, 0 = greedy; default: config.")
  flags.DEFINE_integer("top_k", None, "Sample from the K most likely bytes only.")
  flags.DEFINE_float("top_p", None, "Nucleus sampling: keep the most likely bytes up to this "
                     "total probability, in (0, 1].")
  flags.DEFINE_integer("seed", 0, "Random seed of the sampler.")
  flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the latest.")
  flags.DEFINE_list("stop_bytes", None, "Comma-separated byte values (0..255) that end the "
                    "continuation, e.g. 10 for a newline.")
  flags.DEFINE_bool("slide", False, "Let the context window slide forward when the prompt "
                    "plus continuation is longer than the model's seq_len.")
  flags.DEFINE_integer("num_samples", 1, "Independent continuations to draw (with --output, "
                       "written one after another).")


def read_prompt(prompt: Optional[str] = None, prompt_file: Optional[str] = None
                ) -> Optional[bytes]:
  """The prompt's bytes, or None when neither `prompt` nor `prompt_file` is given.

  A file is taken byte for byte. Text is encoded as UTF-8, except that bytes which were not
  UTF-8 on the command line (Python decodes them to lone surrogates, "surrogateescape")
  come back as the bytes they were.

  Raises:
    InputError: both given, an unreadable file (named), or text that cannot be encoded.
  """
  if prompt is not None and prompt_file:
    raise InputError("give --prompt or --prompt_file, not both")
  if prompt_file:
    try:   # non-blocking: a FIFO must not wait for a writer
      with open(prompt_file, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK)) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
          raise InputError(f"--prompt_file {prompt_file} is {_kind(prompt_file)}, not a "
                           f"regular file")
        _check_prompt_size(prompt_file, info.st_size)
        return f.read()
    except OSError as e:
      raise InputError(f"cannot read --prompt_file {prompt_file}: {e.strerror or e}") from e
  if prompt is None:
    return None
  try:
    return prompt.encode("utf-8", "surrogateescape")
  except UnicodeEncodeError as e:
    raise InputError(f"--prompt is not text: {e.reason} at character {e.start} "
                     f"({prompt[e.start]!r}); put raw bytes in a --prompt_file") from None


def run_files() -> tuple[tuple[str, ...], tuple[str, ...]]:
  """`(files, folders)` that training writes in its work directory: every one of them is
  the run's record, and `--output` may not replace it."""
  from megabyte_jax.training.checkpoint import CHECKPOINT_SUBDIR  # pylint: disable=g-import-not-at-top
  from megabyte_jax.training.history import HISTORY_FILE  # pylint: disable=g-import-not-at-top
  from megabyte_jax.training.metrics import METRICS_FILE  # pylint: disable=g-import-not-at-top
  from megabyte_jax.training.result import RESULT_FILE  # pylint: disable=g-import-not-at-top
  from megabyte_jax.training.workdir import CONFIG_FILE, DATA_FILE  # pylint: disable=g-import-not-at-top
  from megabyte_jax.training.workdir_lock import LOCK_FILE  # pylint: disable=g-import-not-at-top
  files = (CONFIG_FILE, HISTORY_FILE, DATA_FILE, METRICS_FILE, RESULT_FILE, LOCK_FILE)
  return files, (CHECKPOINT_SUBDIR, "tb")


def _check_prompt_size(prompt_file: str, size: int) -> None:
  """Refuses, before reading it, a prompt file that no sample could hold: more bytes than
  positions go (`MAX_TOTAL_BYTES`) or than sampling's buffers fit in memory."""
  from megabyte_jax.data.local_files import eval_memory_limit  # pylint: disable=g-import-not-at-top
  limit = min(MAX_TOTAL_BYTES, eval_memory_limit() // SAMPLE_BYTES_PER_BYTE)
  if size > limit:
    raise InputError(f"--prompt_file {prompt_file} holds {size:,} bytes, more than the "
                     f"{limit:,} a prompt may hold (positions are int32, and sampling keeps "
                     f"{SAMPLE_BYTES_PER_BYTE} bytes of memory per byte)")


def check_output_path(workdir: str, output: str) -> None:
  """Refuses an `--output` that is one of the run's own files (`run_files`: its config and
  config history, data record, metrics, result, lock, checkpoints or TensorBoard events, or
  the temporary file one is written through), which writing would destroy.

  Raises:
    InputError: naming the file.
  """
  target = os.path.realpath(output)
  home = os.path.realpath(workdir)
  files, folders = run_files()
  for name in files:
    path = os.path.join(home, name)
    if target == path or target.startswith(path + ".tmp"):
      raise InputError(f"--output {output} is the run's own {name}; write somewhere else")
  for name in folders:
    inside = os.path.join(home, name)
    if target == inside or target.startswith(inside + os.sep):
      raise InputError(f"--output {output} is inside the run's {name}/ folder; write "
                       f"somewhere else")


# Sampling keeps a few int32 and float32 rows of the whole prompt + continuation per sample
# (the output tokens, their copy on the host, the sliding window's bookkeeping).
SAMPLE_BYTES_PER_BYTE = 16


def check_sample_memory(num_samples: int, total_bytes: int, limit: Optional[int] = None
                        ) -> None:
  """Refuses a generation whose buffers would not fit in memory (half of it by default).

  Raises:
    InputError: naming the size needed and the limit.
  """
  from megabyte_jax.data.local_files import eval_memory_limit  # pylint: disable=g-import-not-at-top
  why = " (half of this machine's memory)" if limit is None else ""
  limit = eval_memory_limit() if limit is None else limit
  need = num_samples * total_bytes * SAMPLE_BYTES_PER_BYTE
  if need > limit:
    raise InputError(f"generating {num_samples} x {total_bytes:,} bytes needs about "
                     f"{need / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB "
                     f"allowed{why}: ask for fewer --num_bytes or --num_samples")


def _stop_bytes(values: Optional[Sequence[Any]]) -> Optional[list[int]]:
  if not values:
    return None
  try:
    return [v if isinstance(v, int) else int(v, 0) for v in values]
  except (TypeError, ValueError):
    raise InputError(f"--stop_bytes must be byte values such as 10,0x3b; got "
                     f"{','.join(map(str, values))}") from None


def _image_format(config, model_cfg) -> dict:
  """`bytes_to_image` arguments for a model trained on images.

  Raises:
    InputError: when the model was not trained on images.
  """
  data = config.data
  if data.get("name") != "image_folder":
    raise InputError(f"PNG output needs a model trained on images (data.name=image_folder); "
                     f"this run was trained on data.name={data.get('name')!r}: write raw "
                     f"bytes to a file without .png instead")
  order = data.get("order", "raster")
  patch_size = (data.get("patch_size") or model_cfg.patch_size) if order == "patch" else None
  size = int(data.image_size)
  return dict(height=size, width=size, channels=int(data.channels), order=order,
              patch_size=patch_size)


def _write_png(path: str, data: bytes, image: dict) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top (only needed here)
  from megabyte_jax.data.codecs import bytes_to_image  # pylint: disable=g-import-not-at-top
  total = image["height"] * image["width"] * image["channels"]
  pixels = bytes_to_image(data[:total], **image)
  Image.fromarray(pixels[:, :, 0] if image["channels"] == 1 else pixels).save(path)


def _print_text(text: str, stream: TextIO) -> None:
  """Writes `text`, replacing what the stream's encoding cannot show (e.g. `?` for U+FFFD
  on an ASCII terminal) instead of failing."""
  encoding = getattr(stream, "encoding", None) or "utf-8"
  stream.write(text.encode(encoding, "replace").decode(encoding))


def run_sample(workdir: str, prompt: Optional[str] = None, prompt_file: Optional[str] = None,
               num_bytes: Optional[int] = None, output: Optional[str] = None,
               temperature: Optional[float] = None, top_k: Optional[int] = None,
               top_p: Optional[float] = None, seed: int = 0, step: Optional[int] = None,
               stop_bytes: Optional[Sequence[Any]] = None, slide: bool = False,
               num_samples: int = 1, stdout: Optional[TextIO] = None,
               stderr: Optional[TextIO] = None) -> list[bytes]:
  """The sample command (the flags of the same names; see the module docstring).

  Prints each sample (prompt and continuation) to `stdout` as UTF-8 text with invalid bytes
  shown as U+FFFD, or writes the raw bytes (or a PNG) to `output` and says so on `stderr`.

  Returns:
    The samples' bytes, prompt included (after a stop byte, a sample ends).

  Raises:
    MegabyteError (InputError, ConfigError, CheckpointError, MissingExtra): one-line user
      mistakes; the prompt and the numbers are checked before the model is loaded where
      they can be.
  """
  stdout = sys.stdout if stdout is None else stdout
  stderr = sys.stderr if stderr is None else stderr
  if num_samples < 1:
    raise InputError(f"--num_samples must be at least 1, got {num_samples}")
  if isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) > MAX_SEED:
    raise InputError(f"--seed must be an integer in -2**62..2**62, got {seed}")
  if num_bytes is not None and not 0 <= num_bytes <= MAX_TOTAL_BYTES:
    raise InputError(f"--num_bytes must be in 0..{MAX_TOTAL_BYTES:,}, got {num_bytes}")
  png = bool(output) and output.lower().endswith(".png")
  if png and num_samples > 1:
    raise InputError("--output=*.png writes one image; use --num_samples=1")
  if png:   # before the model loads: a missing Pillow is one line naming its extra
    require("PIL.Image", "tfds", "PNG output (--output=*.png)")
  if output:
    check_output_path(workdir, output)
  given = read_prompt(prompt, prompt_file)
  if num_bytes is not None:
    check_sample_memory(num_samples, len(given or b"") + num_bytes)
  stops = _stop_bytes(stop_bytes)
  loaded = load_trained(workdir, step)
  config, model, params, step = loaded.config, loaded.model, loaded.params, loaded.step
  image = _image_format(config, model.config) if png else None
  if given is None:
    given = str(config.sample.prompt).encode("utf-8", "surrogateescape")
  prompt_bytes = np.frombuffer(given, np.uint8)
  if num_bytes is None and image:
    num_bytes = max(0, image["height"] * image["width"] * image["channels"] - prompt_bytes.size)
  elif num_bytes is None:
    num_bytes = int(config.sample.num_bytes)
  if prompt_bytes.size + num_bytes > MAX_TOTAL_BYTES:
    raise InputError(f"the prompt ({prompt_bytes.size:,} bytes) plus --num_bytes={num_bytes:,} "
                     f"is more than {MAX_TOTAL_BYTES:,} bytes")
  check_sample_memory(num_samples, prompt_bytes.size + num_bytes)
  temperature = config.sample.temperature if temperature is None else temperature
  top_k = config.sample.top_k if top_k is None else top_k
  rows = np.broadcast_to(prompt_bytes, (num_samples, prompt_bytes.size))
  start = time.perf_counter()
  out = np.asarray(generate(model, {"params": params}, rows, num_bytes, jax.random.key(seed),
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            stop_bytes=stops, slide=slide))
  seconds = time.perf_counter() - start
  texts = [bytes(row[row >= 0].astype(np.uint8)) for row in out]   # -1: after a stop byte
  logging.info("step %d: %d x %d bytes in %.2f s (compilation included)", step, len(texts),
               num_bytes, seconds)
  if output:
    try:
      if image:
        _write_png(output, texts[0], image)
      else:
        with open(output, "wb") as f:
          f.write(b"".join(texts))
    except (OSError, MegabyteError) as e:
      reason = getattr(e, "strerror", None) or e
      raise InputError(f"cannot write --output {output}: {reason}") from e
    what = (f"a {image['height']}x{image['width']} image" if image
            else f"{sum(map(len, texts))} bytes")
    _print_text(f"wrote {what} to {output}\n", stderr)
    return texts
  for i, text in enumerate(texts):
    if len(texts) > 1:
      _print_text(f"--- sample {i}\n", stdout)
    _print_text(text.decode("utf-8", errors="replace") + "\n", stdout)
  stdout.flush()
  return texts


def main(argv):
  """The command: `run_sample` with the flags' values; a user mistake exits with one line."""
  quiet_logging()
  del argv
  values = flags.FLAGS
  if not values.workdir:
    sys.exit("error: --workdir is required (the directory training wrote)")
  try:
    run_sample(values.workdir, prompt=values.prompt, prompt_file=values.prompt_file,
               num_bytes=values.num_bytes, output=values.output,
               temperature=values.temperature, top_k=values.top_k, top_p=values.top_p,
               seed=values.seed, step=values.step, stop_bytes=values.stop_bytes,
               slide=values.slide, num_samples=values.num_samples)
  except MegabyteError as e:
    sys.exit(f"error: {e}")


GUIDE = """\
usage: megabyte-sample --workdir=DIR [--prompt=TEXT | --prompt_file=FILE] [--num_bytes=N]
                       [--output=FILE] [--temperature=T --top_k=K --top_p=P --seed=S]

Continues a prompt with a trained model (the run megabyte-train wrote to DIR, its latest or
--step checkpoint) and prints the prompt and continuation as text (bytes that are not UTF-8
shown as U+FFFD). --output=FILE writes the raw bytes instead; for a model trained on images,
--output=NAME.png writes the image (Pillow, in the [tfds] extra). Defaults: the run's
config.sample section (prompt, num_bytes, temperature, top_k)."""


def run(argv: Optional[list[str]] = None) -> None:
  """The `megabyte-sample` command (and `python -m megabyte_jax.sample`); `--help` prints
  `GUIDE` and the flags."""
  _define_flags()
  if cli.wants_help(sys.argv if argv is None else argv):
    cli.print_help(GUIDE, __name__)
    return
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
