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
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

from megabyte_jax.cli import parse_flags, quiet_logging
from megabyte_jax.errors import InputError, MegabyteError
from megabyte_jax.generation import generate
from megabyte_jax.workdir import load_trained

_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory (holds config.json).")
_PROMPT = flags.DEFINE_string("prompt", None, "Prompt text (UTF-8); default: config.sample.prompt.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "Read the prompt bytes from this file.")
_NUM_BYTES = flags.DEFINE_integer("num_bytes", None,
                                  "Bytes to generate; default: config.sample.num_bytes.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the bytes (prompt + continuation) to "
                              "this file instead of printing them; NAME.png writes an image "
                              "(models trained on images).")
_TEMPERATURE = flags.DEFINE_float("temperature", None,
                                  "Softmax temperature, 0 = greedy; default: config.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample from the K most likely bytes only.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling: keep the most likely bytes "
                            "up to this total probability, in (0, 1].")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the sampler.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the latest.")
_STOP = flags.DEFINE_list("stop_bytes", None, "Comma-separated byte values (0..255) that end "
                          "the continuation, e.g. 10 for a newline.")
_SLIDE = flags.DEFINE_bool("slide", False, "Let the context window slide forward when the "
                           "prompt plus continuation is longer than the model's seq_len.")
_BATCH = flags.DEFINE_integer("num_samples", 1, "Independent continuations to draw (with "
                              "--output, written one after another).")


def _prompt_bytes(config) -> bytes:
  if _PROMPT.value is not None and _PROMPT_FILE.value:
    raise InputError("give --prompt or --prompt_file, not both")
  if _PROMPT_FILE.value:
    try:
      with open(_PROMPT_FILE.value, "rb") as f:
        return f.read()
    except OSError as e:
      raise InputError(f"cannot read --prompt_file {_PROMPT_FILE.value}: "
                       f"{e.strerror or e}") from e
  if _PROMPT.value is not None:
    return _PROMPT.value.encode("utf-8")
  return str(config.sample.prompt).encode("utf-8")


def _stop_bytes() -> list[int] | None:
  if not _STOP.value:
    return None
  try:
    return [int(v, 0) for v in _STOP.value]
  except ValueError:
    raise InputError(f"--stop_bytes must be byte values such as 10,0x3b; got "
                     f"{','.join(_STOP.value)}") from None


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


def main(argv):
  quiet_logging()
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required (the directory training wrote)")
  try:
    if _BATCH.value < 1:
      raise InputError(f"--num_samples must be at least 1, got {_BATCH.value}")
    png = bool(_OUTPUT.value) and _OUTPUT.value.lower().endswith(".png")
    if png and _BATCH.value > 1:
      raise InputError("--output=*.png writes one image; use --num_samples=1")
    config, model, params, step = load_trained(_WORKDIR.value, _STEP.value)
    image = _image_format(config, model.config) if png else None
    prompt = np.frombuffer(_prompt_bytes(config), np.uint8)
    if _NUM_BYTES.value is not None:
      num_bytes = _NUM_BYTES.value
    elif image:
      num_bytes = max(0, image["height"] * image["width"] * image["channels"] - prompt.size)
    else:
      num_bytes = config.sample.num_bytes
    temperature = (config.sample.temperature if _TEMPERATURE.value is None
                   else _TEMPERATURE.value)
    top_k = config.sample.top_k if _TOP_K.value is None else _TOP_K.value
    rows = np.broadcast_to(prompt, (_BATCH.value, prompt.size))
    start = time.perf_counter()
    out = generate(model, {"params": params}, rows, num_bytes, jax.random.key(_SEED.value),
                   temperature=temperature, top_k=top_k, top_p=_TOP_P.value,
                   stop_bytes=_stop_bytes(), slide=_SLIDE.value)
    out = np.asarray(out)
    seconds = time.perf_counter() - start
  except MegabyteError as e:
    sys.exit(f"error: {e}")
  texts = [bytes(row[row >= 0].astype(np.uint8)) for row in out]   # -1: after a stop byte
  logging.info("step %d: %d x %d bytes in %.2f s (compilation included)", step, len(texts),
               num_bytes, seconds)
  if _OUTPUT.value:
    try:
      if image:
        _write_png(_OUTPUT.value, texts[0], image)
      else:
        with open(_OUTPUT.value, "wb") as f:
          f.write(b"".join(texts))
    except (OSError, MegabyteError) as e:
      reason = getattr(e, "strerror", None) or e
      sys.exit(f"error: cannot write --output {_OUTPUT.value}: {reason}")
    what = (f"a {image['height']}x{image['width']} image" if image
            else f"{sum(map(len, texts))} bytes")
    print(f"wrote {what} to {_OUTPUT.value}", file=sys.stderr)
    return
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f"--- sample {i}")
    sys.stdout.write(text.decode("utf-8", errors="replace"))
    sys.stdout.write("\n")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
