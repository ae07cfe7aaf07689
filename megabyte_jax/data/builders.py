"""TFDS dataset builders for raw-byte corpora: files, images and audio.

Three builders turn local files into TFDS datasets of byte documents, written as
`array_record` files and read back with `builder.as_data_source()`, a random-access source
that Grain feeds on. This path needs no TensorFlow.

* `byte_files`: any directory or glob, one document per file (text, code, binaries).
* `image_folder`: PNG/JPEG files, resized to `image_size x image_size` with Pillow (box
  filter, aspect ratio not kept, as in downsampled ImageNet), converted to RGB or grayscale
  and serialized by `codecs.image_to_bytes` in raster or patch-scan order.
* `audio_folder`: 8/16-bit PCM WAV files, mono, encoded by `codecs.audio_to_bytes`
  (`mulaw8`, `pcm16` or `pcm8`).

Every example is `{"bytes": uint8 [n], "path": the file's path relative to the corpus root}`
(a data source returns "path" as `bytes`). Files go to the "train" or "validation" split by a
hash of that relative path (`local_files.split_files`), so the split is the same everywhere;
an empty split is not written. The options (`BUILDER_OPTIONS`) make up a builder config whose
name ends with a hash of them all, so different options never share a directory of
`data_dir`: `data_dir/<builder>/<config>/1.0.0/`.

`build_source(name, options, data_dir, split)` is the one entry point: it prepares one of our
datasets on first use (nothing is downloaded) and returns the split's data source. Any other
name is read as a TFDS catalog dataset (`"pg19"`, `"imagenet_resized/64x64"`) that is already
prepared, in `array_record` format, in `data_dir`; its text, image, audio or byte feature is
turned into bytes the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from megabyte_jax.data import codecs
from megabyte_jax.data.local_files import STDLIB, resolve_files, split_files
from megabyte_jax.errors import DataError

BUILDERS = ("byte_files", "image_folder", "audio_folder")
SPLITS = ("train", "validation")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
AUDIO_EXTENSIONS = (".wav",)

_COMMON_OPTIONS = {
    "files": None,          # a directory, a glob (`**` recurses) or "stdlib"; required
    "eval_files": None,     # a separate validation directory/glob (then `files` is all train)
    "eval_fraction": 0.05,  # share of files held out for validation, by path hash
    "split_seed": 0,
}
BUILDER_OPTIONS: dict[str, dict[str, Any]] = {
    "byte_files": dict(_COMMON_OPTIONS),
    "image_folder": dict(_COMMON_OPTIONS, image_size=64, channels=3, order="raster",
                         patch_size=None),
    "audio_folder": dict(_COMMON_OPTIONS, encoding="mulaw8", sample_rate=None),
}
"""Each builder's options and their defaults (None: required, or unset)."""

CATALOG_OPTIONS: dict[str, Any] = {
    "feature": None,       # the feature that holds the bytes/text/image/audio; None: guessed
    "order": "raster",     # image features: scan order
    "patch_size": None,    # image features, patch order: bytes per model patch
    "encoding": "mulaw8",  # int16 audio features: byte encoding
}
"""Options for a TFDS catalog dataset read from a prepared `data_dir`."""

_FEATURE_GUESSES = ("bytes", "text", "book_text", "content", "image", "audio")
_VERSION = "1.0.0"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- options


def _as_dict(options: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  if options is None:
    return {}
  if hasattr(options, "to_dict"):  # ml_collections.ConfigDict
    options = options.to_dict()
  return dict(options.items())


def _check_keys(options: dict[str, Any], allowed: Mapping[str, Any], what: str) -> None:
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise DataError(f"unknown option(s) {unknown} for {what}; its options are "
                    f"{sorted(allowed)}")


def _positive_int(value: Any, key: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise DataError(f"option {key} must be a positive integer, got {value!r}")
  return int(value)


def _normalize_pattern(pattern: Any, key: str) -> str:
  if not isinstance(pattern, str) or not pattern:
    raise DataError(f"option {key} must name a directory, a glob or 'stdlib', got "
                    f"{pattern!r}")
  if pattern == STDLIB:
    return pattern
  return os.path.abspath(os.path.expanduser(pattern))


def normalize_options(name: str, options: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  """`options` for builder `name`, validated and completed with the defaults.

  Paths become absolute; options that do not apply (the patch size of a raster scan) become
  None, so that equivalent options give the same config.

  Raises:
    DataError: an unknown builder or option, a missing `files`, or a bad value (including
      an image size / channels / patch size that the patch scan cannot tile).
  """
  if name not in BUILDER_OPTIONS:
    raise DataError(f"unknown builder {name!r}; ours are {list(BUILDERS)}")
  given = _as_dict(options)
  defaults = BUILDER_OPTIONS[name]
  _check_keys(given, defaults, f"builder {name!r}")
  opts = {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}
  if opts["files"] is None:
    raise DataError(f"builder {name!r} needs option files (a directory, a glob or 'stdlib')")
  opts["files"] = _normalize_pattern(opts["files"], "files")
  if opts["eval_files"] is not None:
    opts["eval_files"] = _normalize_pattern(opts["eval_files"], "eval_files")
  fraction = opts["eval_fraction"]
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
      not 0.0 <= fraction < 1.0:
    raise DataError(f"option eval_fraction must be in [0, 1), got {fraction!r}")
  opts["eval_fraction"] = float(fraction)
  if isinstance(opts["split_seed"], bool) or not isinstance(opts["split_seed"],
                                                             (int, np.integer)):
    raise DataError(f"option split_seed must be an integer, got {opts['split_seed']!r}")
  opts["split_seed"] = int(opts["split_seed"])
  if name == "image_folder":
    opts["image_size"] = _positive_int(opts["image_size"], "image_size")
    if opts["channels"] not in (1, 3):
      raise DataError(f"option channels must be 3 (RGB) or 1 (grayscale), got "
                      f"{opts['channels']!r}")
    opts["channels"] = int(opts["channels"])
    if opts["order"] not in codecs.IMAGE_ORDERS:
      raise DataError(f"option order must be one of {list(codecs.IMAGE_ORDERS)}, got "
                      f"{opts['order']!r}")
    if opts["order"] == "raster":
      opts["patch_size"] = None
    else:
      if opts["patch_size"] is None:
        raise DataError("option patch_size is required for the patch scan order (bytes per "
                        "model patch, k*k*channels for k x k pixel blocks)")
      opts["patch_size"] = _positive_int(opts["patch_size"], "patch_size")
      codecs.patch_block_size(opts["image_size"], opts["image_size"], opts["channels"],
                              opts["patch_size"])
  if name == "audio_folder":
    if opts["encoding"] not in codecs.AUDIO_ENCODINGS:
      raise DataError(f"option encoding must be one of {list(codecs.AUDIO_ENCODINGS)}, got "
                      f"{opts['encoding']!r}")
    if opts["sample_rate"] is not None:
      opts["sample_rate"] = _positive_int(opts["sample_rate"], "sample_rate")
  return opts


def _slug(pattern: str) -> str:
  if pattern == STDLIB:
    return STDLIB
  parts = [p for p in pattern.split(os.sep) if p and not any(c in p for c in "*?[")]
  slug = re.sub(r"[^a-z0-9]+", "_", (parts[-1] if parts else "files").lower()).strip("_")
  return slug[:24] or "files"


def config_name(name: str, options: Optional[Mapping[str, Any]]) -> str:
  """The builder config name for `options`: a readable summary and a hash of them all.

  For example `images-32px-rgb-patch48-3f9a0c2e51`. The prepared dataset lives in
  `data_dir/<name>/<config_name>/1.0.0/`, and `f"{name}/{config_name}"` reads it back as a
  catalog-style name.
  """
  opts = normalize_options(name, options)
  digest = hashlib.sha256(json.dumps({"builder": name, "options": opts},
                                     sort_keys=True).encode()).hexdigest()[:10]
  parts = [_slug(opts["files"])]
  if name == "image_folder":
    parts += [f"{opts['image_size']}px", "rgb" if opts["channels"] == 3 else "gray",
              "raster" if opts["order"] == "raster" else f"patch{opts['patch_size']}"]
  elif name == "audio_folder":
    parts.append(opts["encoding"])
  return "-".join(parts + [digest])


# ------------------------------------------------------------------------- reading sources


def read_image(path: str, image_size: int, channels: int = 3) -> np.ndarray:
  """Reads an image file as `uint8 [image_size, image_size, channels]`.

  The image is converted to RGB (`channels=3`) or grayscale (`channels=1`) and resized with
  a box filter when its size differs (the aspect ratio is not kept).

  Raises:
    DataError: naming the file, when Pillow cannot read it.
  """
  mode = "RGB" if channels == 3 else "L"
  try:
    with Image.open(path) as image:
      image.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale
      image = image.convert(mode)
      if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
      pixels = np.asarray(image, np.uint8)
  except FileNotFoundError as e:
    raise DataError(f"cannot read {path}: {e.strerror or e}") from e
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
    raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
  return pixels.reshape(image_size, image_size, channels)


def _read_file(path: str) -> np.ndarray:
  try:
    with open(path, "rb") as f:
      return np.frombuffer(f.read(), np.uint8)
  except OSError as e:
    raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _encode(name: str, opts: Mapping[str, Any], path: str) -> tuple[np.ndarray, dict]:
  """One file's bytes, and facts about it for the dataset metadata."""
  if name == "byte_files":
    return _read_file(path), {}
  if name == "image_folder":
    pixels = read_image(path, opts["image_size"], opts["channels"])
    return codecs.image_to_bytes(pixels, opts["order"], opts["patch_size"]), {}
  samples, rate = codecs.read_wav(path, opts["sample_rate"])
  return codecs.audio_to_bytes(samples, opts["encoding"]), {"sample_rate": rate}


def _matching(name: str, pattern: str) -> tuple[str, list[str]]:
  root, files = resolve_files(pattern)
  extensions = {"image_folder": IMAGE_EXTENSIONS, "audio_folder": AUDIO_EXTENSIONS}.get(name)
  if extensions:
    kept = [f for f in files if f.lower().endswith(extensions)]
    if not kept:
      raise DataError(f"no {'/'.join(e[1:].upper() for e in extensions)} files among the "
                      f"{len(files)} file(s) matching {pattern!r}")
    if len(kept) < len(files):
      log.info("%s: skipping %d file(s) matching %r that are not %s", name,
               len(files) - len(kept), pattern, "/".join(extensions))
    files = kept
  return root, files


def split_sources(name: str, options: Optional[Mapping[str, Any]]
                  ) -> dict[str, list[tuple[str, str]]]:
  """The `(root, path)` of every source file of each split ("train", "validation").

  Raises:
    DataError: no matching files (an empty folder), or bad options.
  """
  opts = normalize_options(name, options)
  root, files = _matching(name, opts["files"])
  if opts["eval_files"] is not None:
    eval_root, eval_files = _matching(name, opts["eval_files"])
    return {"train": [(root, f) for f in files],
            "validation": [(eval_root, f) for f in eval_files]}
  train, evaluation = split_files(root, files, opts["eval_fraction"], opts["split_seed"])
  return {"train": [(root, f) for f in train], "validation": [(root, f) for f in evaluation]}


def _fingerprint(sources: Mapping[str, Sequence[tuple[str, str]]]) -> str:
  """A hash of every split's relative paths and file sizes."""
  h = hashlib.sha256()
  for split in sorted(sources):
    for root, path in sources[split]:
      try:
        size = os.path.getsize(path)
      except OSError:
        size = -1
      h.update(f"{split}\t{os.path.relpath(path, root)}\t{size}\n".encode())
  return h.hexdigest()[:16]


# -------------------------------------------------------------------------------- builders


@dataclasses.dataclass(eq=False)
class ByteBuilderConfig(tfds.core.BuilderConfig):
  """A builder config holding the normalized options (see `BUILDER_OPTIONS`)."""

  options: dict = dataclasses.field(default_factory=dict)


class _ByteBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common part of our builders: one example per source file."""

  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "First version."}
  # Where TFDS would look for a checksums file next to the code. Nothing is downloaded, and
  # finding the path for a builder inside a package needs `importlib_resources`, which
  # tensorflow-datasets 4.9 uses without requiring it.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(type(self).__doc__ or "").strip(),
        features=tfds.features.FeaturesDict({
            "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "path": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    opts = self.builder_config.options
    sources = split_sources(self.name, opts)
    self._facts = {}
    self.info.metadata.update({
        "options": opts,
        "fingerprint": _fingerprint(sources),
        "files": {split: len(items) for split, items in sources.items()},
    })
    return {split: self._generate_examples(items) for split, items in sources.items() if items}

  def _generate_examples(self, items: Sequence[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
    for root, path in items:
      data, facts = _encode(self.name, self.builder_config.options, path)
      for key, value in facts.items():
        self._facts.setdefault(key, set()).add(value)
        self.info.metadata[key + "s"] = sorted(self._facts[key])
      rel = os.path.relpath(path, root)
      yield rel, {"bytes": data, "path": rel}


class ByteFiles(_ByteBuilder, skip_registration=True):
  """Every file of a directory or glob as one document of raw bytes."""


class ImageFolder(_ByteBuilder, skip_registration=True):
  """PNG/JPEG images resized to N x N, as raw pixel bytes in raster or patch-scan order."""


class AudioFolder(_ByteBuilder, skip_registration=True):
  """WAV files as mono audio bytes (8-bit mu-law, 16-bit PCM or 8-bit PCM)."""


_CLASSES = {"byte_files": ByteFiles, "image_folder": ImageFolder, "audio_folder": AudioFolder}


def make_builder(name: str, options: Optional[Mapping[str, Any]],
                 data_dir: str) -> tfds.core.GeneratorBasedBuilder:
  """The TFDS builder of our dataset `name` with `options`, writing into `data_dir`.

  Nothing is read or written until `download_and_prepare()` (or use `prepare`).

  Raises:
    DataError: an unknown builder name or bad options.
  """
  if name not in _CLASSES:
    raise DataError(f"unknown builder {name!r}; ours are {list(BUILDERS)}")
  opts = normalize_options(name, options)
  config = ByteBuilderConfig(name=config_name(name, opts), version=_VERSION,
                             description=json.dumps(opts, sort_keys=True), options=opts)
  return _CLASSES[name](config=config, data_dir=os.path.expanduser(data_dir),
                        file_format="array_record")


def _remove_if_empty(path: str) -> None:
  try:
    os.rmdir(path)
  except OSError:
    pass


def prepare(name: str, options: Optional[Mapping[str, Any]],
            data_dir: str) -> tfds.core.GeneratorBasedBuilder:
  """Prepares our dataset `name` into `data_dir` unless it is already there; returns its builder.

  Writing goes to a temporary directory that is renamed only when complete, so a failure
  leaves nothing that could pass for a prepared dataset. When the dataset is already
  prepared and its source files are present here, they are checked against the prepared
  copy (names and sizes).

  Raises:
    DataError: bad options, no matching files (an empty folder), an unreadable image, an
      unsupported WAV (naming the file), or source files that changed since preparation.
  """
  builder = make_builder(name, options, data_dir)
  opts = builder.builder_config.options
  if builder.is_prepared():
    try:
      current = _fingerprint(split_sources(name, opts))
    except DataError:
      current = None  # the source files are not on this machine: use the prepared copy
    prepared = builder.info.metadata.get("fingerprint")
    if current is not None and prepared is not None and current != prepared:
      raise DataError(f"the files matching {opts['files']!r} changed (names or sizes) since "
                      f"{name} was prepared in {builder.data_dir}; delete that directory to "
                      f"prepare it again")
    return builder
  split_sources(name, opts)  # no files, no builder directory: fail before TFDS starts
  config_dir = os.path.dirname(os.fspath(builder.data_dir))
  try:
    with tempfile.TemporaryDirectory(prefix="megabyte_tfds_") as downloads:
      builder.download_and_prepare(
          download_dir=downloads, file_format="array_record",
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except DataError:
    _remove_if_empty(config_dir)
    _remove_if_empty(os.path.dirname(config_dir))
    raise
  except Exception as e:
    _remove_if_empty(config_dir)
    _remove_if_empty(os.path.dirname(config_dir))
    again = make_builder(name, opts, data_dir)
    if again.is_prepared():  # another process (host) prepared it at the same time
      return again
    raise DataError(f"preparing {name} ({opts['files']!r}) into {builder.data_dir} failed: "
                    f"{type(e).__name__}: {e}") from e
  return builder


def _our_split(builder, split: str):
  base = re.match(r"[\w-]*", split).group(0)  # "train" of "train[:10%]"
  if base not in builder.info.splits:
    have = list(builder.info.splits)
    raise DataError(f"{builder.name} ({builder.builder_config.options['files']!r}) has no "
                    f"{split!r} split (it has {have}; a split with no files is not written: "
                    f"check eval_fraction / eval_files)")
  check_shards(builder, base, f"delete {builder.data_dir} to prepare it again")
  return builder.as_data_source(split=split)


def check_shards(builder, split: str, fix: str) -> None:
  """Opens every `array_record` shard of `split` (its footer and index: a truncated shard
  has none) and compares its record count with the dataset's metadata, so that a damaged
  shard is named before training reads it lazily (the reader's own error would come from a
  data-loader thread, or, on resume, look like a damaged checkpoint).

  Raises:
    DataError: naming the shard and `fix`.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  info = builder.info.splits[split]
  lengths = list(getattr(info, "shard_lengths", None) or [])
  for index, path in enumerate(info.filepaths):
    problem = None
    try:
      reader = array_record_module.ArrayRecordReader(os.fspath(path))
      if not reader.ok():
        problem = "its index cannot be read (it is truncated or corrupt)"
      elif index < len(lengths) and reader.num_records() != lengths[index]:
        problem = (f"it holds {reader.num_records():,} records instead of "
                   f"{lengths[index]:,}")
      reader.close()
    except (OSError, RuntimeError, ValueError) as e:
      problem = (f"{' '.join(str(e).split())[:200] or type(e).__name__} (it is truncated "
                 f"or corrupt)")
    if problem:
      raise DataError(f"the {split} shard {os.fspath(path)} of the prepared dataset "
                      f"{builder.name!r} is damaged: {problem}; {fix}")


# --------------------------------------------------------------------------- catalog names


def _prepared_names(data_dir: str) -> list[str]:
  try:
    return sorted(d for d in os.listdir(os.path.expanduser(data_dir))
                  if os.path.isdir(os.path.join(os.path.expanduser(data_dir), d))
                  and d != "downloads")
  except OSError:
    return []


def _catalog_builder(name: str, data_dir: str):
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=g-import-not-at-top
  try:
    return read_only_builder.builder_from_files(name, data_dir=os.path.expanduser(data_dir))
  except Exception as e:  # DatasetNotFoundError, or a malformed name
    base = name.split("/")[0].split(":")[0]
    prepared = _prepared_names(data_dir)
    there = f"; prepared there: {prepared}" if prepared else "; nothing is prepared there"
    if base in BUILDERS:
      raise DataError(f"{name!r} is not prepared in data_dir={data_dir!r}{there}") from e
    if base in tfds.list_builders(with_community_datasets=False):
      raise DataError(
          f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r}{there}. Nothing "
          f"is downloaded at run time: prepare it where there is network access, e.g. "
          f"`tfds build {name} --file_format=array_record --data_dir=DIR`, and copy DIR "
          f"here") from e
    raise DataError(
        f"unknown dataset {name!r}: our builders are {list(BUILDERS)}; any other name is read "
        f"as a TFDS catalog dataset (e.g. 'pg19', 'imagenet_resized/64x64') prepared in "
        f"data_dir={data_dir!r}, and there is none named {name!r}{there}") from e


def _feature_kind(feature) -> str:
  if isinstance(feature, tfds.features.Image):
    return "image"
  if isinstance(feature, tfds.features.Text):
    return "text"
  if isinstance(feature, tfds.features.Audio):
    return "audio"
  if isinstance(feature, tfds.features.Tensor):
    dtype = np.dtype(feature.np_dtype)
    if dtype == np.uint8:
      return "bytes"
    if dtype == np.int16 and len(feature.shape) == 1:
      return "audio"
    if dtype == np.object_:  # a string tensor
      return "text"
  return "unsupported"


class FeatureBytesSource:
  """A random-access source over one feature of a TFDS data source, turned into bytes.

  Items are `{"bytes": uint8 [n], "path": "<name>/<split>/<index>"}`: text as UTF-8, images
  through `codecs.image_to_bytes`, int16 audio through `codecs.audio_to_bytes`, uint8 arrays
  as they are.
  """

  def __init__(self, source, feature: str, kind: str, label: str, order: str = "raster",
               patch_size: Optional[int] = None, encoding: str = "mulaw8"):
    self._source, self._feature, self._kind, self._label = source, feature, kind, label
    self._order, self._patch_size, self._encoding = order, patch_size, encoding

  def __len__(self) -> int:
    return len(self._source)

  def _convert(self, index: int, record: Mapping[str, Any]) -> dict:
    value = record[self._feature]
    if self._kind == "image":
      data = codecs.image_to_bytes(np.asarray(value, np.uint8), self._order, self._patch_size)
    elif self._kind == "audio":
      data = codecs.audio_to_bytes(np.asarray(value).astype(np.int16).reshape(-1),
                                   self._encoding)
    elif isinstance(value, str):
      data = np.frombuffer(value.encode("utf-8"), np.uint8)
    elif isinstance(value, (bytes, bytearray, memoryview)):
      data = np.frombuffer(value, np.uint8)
    else:
      data = np.asarray(value, np.uint8).reshape(-1)
    return {"bytes": data, "path": f"{self._label}/{index}"}

  def __getitem__(self, index: int) -> dict:
    return self._convert(int(index), self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    records = self._source.__getitems__(indices)
    return [self._convert(int(i), r) for i, r in zip(indices, records)]

  def __repr__(self) -> str:
    return (f"FeatureBytesSource({self._label}, feature={self._feature!r} ({self._kind}), "
            f"{len(self)} records)")


def _catalog_source(name: str, options: Optional[Mapping[str, Any]], data_dir: str,
                    split: str) -> FeatureBytesSource:
  given = _as_dict(options)
  _check_keys(given, CATALOG_OPTIONS, f"TFDS dataset {name!r}")
  opts = {k: (given[k] if given.get(k) is not None else v) for k, v in CATALOG_OPTIONS.items()}
  builder = _catalog_builder(name, data_dir)
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise DataError(f"{name!r} in {data_dir!r} is stored as "
                    f"{getattr(builder.info.file_format, 'value', builder.info.file_format)}; "
                    f"random access needs array_record (prepare it with "
                    f"`tfds build {name} --file_format=array_record`)")
  features = builder.info.features
  names = list(features.keys())
  feature = opts["feature"]
  if feature is None:
    guesses = [f for f in _FEATURE_GUESSES if f in names]
    if not guesses:
      media = [f for f in names if _feature_kind(features[f]) in ("image", "audio")]
      guesses = media if len(media) == 1 else []
    if not guesses:
      raise DataError(f"which feature of {name!r} holds the data? set option feature to one "
                      f"of {names}")
    feature = guesses[0]
  if feature not in names:
    raise DataError(f"{name!r} has no feature {feature!r}; its features are {names}")
  kind = _feature_kind(features[feature])
  if kind == "unsupported":
    raise DataError(f"feature {feature!r} of {name!r} ({features[feature]}) cannot be read "
                    f"as bytes; use a text, image, audio or uint8 feature")
  if kind == "image":
    if opts["order"] not in codecs.IMAGE_ORDERS:
      raise DataError(f"option order must be one of {list(codecs.IMAGE_ORDERS)}, got "
                      f"{opts['order']!r}")
    shape = features[feature].shape
    if opts["order"] == "patch" and None not in shape:
      codecs.patch_block_size(shape[0], shape[1], shape[2], opts["patch_size"])
  if kind == "audio" and opts["encoding"] not in codecs.AUDIO_ENCODINGS:
    raise DataError(f"option encoding must be one of {list(codecs.AUDIO_ENCODINGS)}, got "
                    f"{opts['encoding']!r}")
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:
    raise DataError(f"{name!r} in {data_dir!r} has no split {split!r} (it has "
                    f"{list(builder.info.splits)}): {e}") from e
  check_shards(builder, re.match(r"[\w-]*", split).group(0),
               f"prepare {name!r} again (tfds build {name} --file_format=array_record)")
  return FeatureBytesSource(source, feature, kind, label=f"{name}/{split}", order=opts["order"],
                            patch_size=opts["patch_size"], encoding=opts["encoding"])


# ----------------------------------------------------------------------------- entry point


def build_source(name: str, options: Optional[Mapping[str, Any]], data_dir: str, split: str):
  """A random-access source of byte documents: `len(src)`, `src[i]` -> `{"bytes", "path"}`.

  Args:
    name: one of `BUILDERS` (prepared into `data_dir` on first use, from local files only),
      or a TFDS catalog name such as `"pg19"` or `"imagenet_resized/64x64"` (also
      `"<builder>/<config>"` for one of ours), read from `data_dir` where it must already be
      prepared in `array_record` format; nothing is downloaded.
    options: for our builders, the keys of `BUILDER_OPTIONS[name]`; for a catalog dataset,
      those of `CATALOG_OPTIONS` (which feature holds the data, and how images or audio
      become bytes).
    data_dir: the TFDS data directory.
    split: "train" or "validation" for our builders, any split of a catalog dataset; TFDS
      slices ("train[:1%]", "validation[:100]") work too.

  Returns:
    A data source whose items are dicts with "bytes" (`uint8 [n]`) and "path" (the file's
    path relative to the corpus root, as `bytes`, for our builders; `"<name>/<split>/<i>"`
    for a catalog dataset). It can be pickled, for Grain worker processes.

  Raises:
    DataError: an unknown name (listing ours), a catalog dataset that is not prepared,
      unknown or bad options, an empty folder, an unreadable image, an unsupported WAV, a
      missing split.
  """
  if name in BUILDERS:
    return _our_split(prepare(name, options, data_dir), split)
  return _catalog_source(name, options, data_dir, split)
