"""Samples from the image study's models, as pictures: raster scan against patch scan.

After the runs of an image study (`experiments.study` with an `mnist` corpus) the model of
each model's largest budget draws `num_samples` images from nothing and completes the bottom
half of `num_prompts` held-out images from their top half (in both scan orders the first half of the
bytes is the top half of the image: raster rows, or the top rows of pixel blocks). Per run:

    samples/<run>.npz    the sampled and completed images (uint8), and the prompts' originals
    samples/<run>.png    its grid: samples, then originals and completions in pairs of rows

and for the study (`write_figures`, the largest budget of each model):

    samples.png          one row of samples per model
    completions.png      the held-out originals, then each model's completions
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from experiments.study.records import load_runs, save_run
from megabyte_jax.data import codecs


def image_grid(images: np.ndarray, cols: int, scale: int = 2, gap: int = 2,
               background: int = 128) -> np.ndarray:
  """Tiles grayscale `[n, h, w]` uint8 images into one `[H, W]` uint8 picture, each image
  enlarged `scale` times (nearest neighbour) and separated by `gap` pixels of `background`."""
  images = np.asarray(images)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [n, h, w], got {images.dtype} {images.shape}")
  if cols <= 0 or scale <= 0 or gap < 0:
    raise ValueError(f"cols and scale must be positive and gap >= 0, got {cols}, {scale}, {gap}")
  n, h, w = images.shape
  rows = max(1, -(-n // cols))
  big = images.repeat(scale, axis=1).repeat(scale, axis=2)
  hh, ww = h * scale, w * scale
  out = np.full((rows * (hh + gap) + gap, cols * (ww + gap) + gap), background, np.uint8)
  for i in range(n):
    r, c = divmod(i, cols)
    out[gap + r * (hh + gap):gap + r * (hh + gap) + hh,
        gap + c * (ww + gap):gap + c * (ww + gap) + ww] = big[i]
  return out


def labelled_rows(rows: Sequence[tuple[str, np.ndarray]], label_width: int = 150) -> np.ndarray:
  """Stacks picture rows (e.g. `image_grid` outputs) with a text label left of each."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  width = max(grid.shape[1] for _, grid in rows) + label_width
  pictures = []
  for label, grid in rows:
    canvas = Image.new("L", (width, grid.shape[0]), 255)
    canvas.paste(Image.fromarray(grid), (label_width, 0))
    ImageDraw.Draw(canvas).text((4, max(0, grid.shape[0] // 2 - 6)), label, fill=0)
    pictures.append(np.asarray(canvas))
  return np.concatenate(pictures, axis=0)


def save_png(path: str, picture: np.ndarray) -> str:
  """Writes a uint8 grayscale picture as PNG; returns the path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(picture).save(path)
  return path


def sample_images(workdir: str, order: str, patch_size: int, canvas: int,
                  originals: np.ndarray, num_samples: int = 32, num_prompts: int = 8,
                  seed: int = 0, temperature: float = 1.0) -> dict:
  """Draws images from the model trained in `workdir` (KV-cached `generate`).

  Returns a dict of uint8 arrays `[n, canvas, canvas]`: "samples" (from an empty prompt),
  "completions" (the top half of each of the first `num_prompts` `originals` given, the
  bottom half generated) and "originals".
  """
  import jax  # pylint: disable=g-import-not-at-top
  from megabyte_jax.inference.generation import generate  # pylint: disable=g-import-not-at-top
  from megabyte_jax.training.workdir import load_trained  # pylint: disable=g-import-not-at-top
  loaded = load_trained(workdir)
  model, params = loaded.model, loaded.params
  length = canvas * canvas
  if model.config.seq_len != length:
    raise ValueError(f"the model's context ({model.config.seq_len}) is not one "
                     f"{canvas}x{canvas} image ({length} bytes)")
  variables = {"params": params}
  rng = jax.random.key(seed)

  def decode(rows) -> np.ndarray:
    return np.stack([codecs.bytes_to_image(np.asarray(row), canvas, canvas, 1, order,
                                           patch_size)[:, :, 0] for row in rows])

  out = {}
  empty = np.zeros((num_samples, 0), np.int32)
  out["samples"] = decode(generate(model, variables, empty, length, rng, temperature))
  originals = np.asarray(originals[:num_prompts], np.uint8)
  prompts = np.stack([codecs.image_to_bytes(img, order, patch_size)[:length // 2]
                      for img in originals]).astype(np.int32)
  out["completions"] = decode(generate(model, variables, prompts, length - length // 2,
                                       jax.random.fold_in(rng, 1), temperature))
  out["originals"] = originals
  return out


def sample_study(results_dir: str, study: dict, records: Sequence[dict],
                 time_left_s: Optional[float] = None, num_samples: int = 32,
                 num_prompts: int = 8, log: Callable[[str], None] = print) -> list[dict]:
  """Samples from the largest finished budget of each model of an image study.

  Reads each run's checkpoint (`record["workdir"]`, kept by `run_study(...,
  keep_checkpoints=True)`) and the held-out images of its corpus (`record["corpus_dir"]`),
  writes `samples/<run>.npz` and `.png`, and records the PNG in the run's record (saved
  again). A model whose sampling would not end within `time_left_s` (judged by the slowest
  model so far) is skipped. Returns all records, updated.
  """
  canvas = int(study["corpus"].get("canvas", 32))
  records = [dict(r) for r in records]
  largest: dict[str, dict] = {}
  for record in records:
    if record.get("status") == "done" and record.get("workdir") and (
        record["model"] not in largest
        or record["budget_flops"] > largest[record["model"]]["budget_flops"]):
      largest[record["model"]] = record
  start, slowest = time.perf_counter(), 0.0
  for record in largest.values():
    elapsed = time.perf_counter() - start
    if time_left_s is not None and elapsed + slowest >= time_left_s:
      log(f"{record['run']}: no sampling, {time_left_s - elapsed:.0f} s left")
      continue
    began = time.perf_counter()
    originals = np.load(os.path.join(record["corpus_dir"], "eval_images.npy"))
    drawn = sample_images(record["workdir"], record.get("order") or "raster",
                          int(record.get("patch_size") or 1), canvas, originals, num_samples,
                          num_prompts, seed=int(study.get("seed", 0)))
    if write_run_samples(results_dir, record["run"], drawn) is None:
      log("Pillow is missing: PNGs left out (python -m experiments.images --results=DIR)")
    record["samples"] = os.path.join("samples", _file_name(record["run"]) + ".png")
    record["sample_s"] = round(time.perf_counter() - began, 1)
    slowest = max(slowest, record["sample_s"])
    save_run(results_dir, record)
    log(f"{record['run']}: sampled {num_samples} images and {num_prompts} completions "
        f"({record['sample_s']:.0f} s)")
  return records


def _file_name(run: str) -> str:
  return run.replace("/", "_").replace("@", "_at_")


def write_run_samples(results_dir: str, run: str, drawn: dict) -> Optional[str]:
  """Writes one run's `.npz` and PNG grid under `results_dir/samples/`; returns the PNG (None
  where Pillow is missing: `python -m experiments.images --results=DIR` draws it later)."""
  directory = os.path.join(results_dir, "samples")
  os.makedirs(directory, exist_ok=True)
  np.savez_compressed(os.path.join(directory, _file_name(run) + ".npz"), **drawn)
  return run_grid(os.path.join(directory, _file_name(run) + ".npz"))


def run_grid(npz_path: str) -> Optional[str]:
  """Draws `<run>.png` beside a run's `<run>.npz`: the samples, then the held-out originals
  and their completions in pairs of rows. Returns the PNG (None without Pillow)."""
  try:
    import PIL  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  with np.load(npz_path) as drawn:
    cols = len(drawn["originals"])
    pairs = np.concatenate([drawn["originals"], drawn["completions"]])
    picture = np.concatenate([image_grid(drawn["samples"], cols), image_grid(pairs, cols)])
  return save_png(npz_path[:-len(".npz")] + ".png", picture)


def write_figures(results_dir: str, records: Sequence[dict], per_row: int = 16
                  ) -> Optional[list[str]]:
  """The study's `samples.png` and `completions.png` (largest budget of each model); None
  when no run has samples, or Pillow is missing."""
  try:
    import PIL  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  best: dict[str, dict] = {}
  for record in records:
    if record.get("status") != "done":
      continue
    path = os.path.join(results_dir, "samples", _file_name(record["run"]) + ".npz")
    if not os.path.exists(path):
      continue
    if record["model"] not in best \
        or record["budget_flops"] > best[record["model"]]["budget_flops"]:
      best[record["model"]] = dict(record, _npz=path)
  if not best:
    return None
  sample_rows, completion_rows = [], []
  originals = None
  for name, record in best.items():
    with np.load(record["_npz"]) as drawn:
      label = f"{name}\n{record['eval_bpb']:.3f} bpb" if record.get("eval_bpb") else name
      sample_rows.append((label, image_grid(drawn["samples"][:per_row], per_row)))
      completion_rows.append((name, image_grid(drawn["completions"], len(drawn["completions"]))))
      if originals is None:
        originals = drawn["originals"]
  completion_rows.insert(0, ("held-out original", image_grid(originals, len(originals))))
  return [save_png(os.path.join(results_dir, "samples.png"), labelled_rows(sample_rows)),
          save_png(os.path.join(results_dir, "completions.png"),
                   labelled_rows(completion_rows))]


def main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m experiments.images --results=DIR`: (re)draws every PNG of an image study
  from its `samples/*.npz` and run records (e.g. after a GPU run without Pillow)."""
  import argparse  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Draw the image study's PNGs from its samples.")
  parser.add_argument("--results", required=True)
  args = parser.parse_args(argv)
  paths = [run_grid(p) for p in sorted(glob.glob(os.path.join(args.results, "samples", "*.npz")))]
  if not paths:
    sys.exit(f"error: no samples/*.npz in {args.results!r}")
  if None in paths:
    sys.exit("error: Pillow is not installed")
  paths += write_figures(args.results, load_runs(args.results)) or []
  for path in paths:
    print(path)


if __name__ == "__main__":
  main()
