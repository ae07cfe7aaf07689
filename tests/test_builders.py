"""TFDS builders: each writes array_record files and reads back exactly the bytes it was given.

Real offline material only (tests/data, see its README, and a few standard-library sources);
no TensorFlow and no network.
"""

import glob
import io
import os
import pickle
import shutil
import sys
import wave

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from megabyte_jax.data import builders, codecs
from megabyte_jax.data.local_files import split_files
from megabyte_jax.errors import DataError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
IMAGES = os.path.join(DATA, "images")
AUDIO = os.path.join(DATA, "audio")


def _records(source):
  """{relative path: bytes} of every record of a data source."""
  out = {}
  for i in range(len(source)):
    record = source[i]
    assert isinstance(record["bytes"], np.ndarray) and record["bytes"].dtype == np.uint8
    assert record["bytes"].ndim == 1
    path = record["path"]
    out[path.decode() if isinstance(path, bytes) else path] = record["bytes"].tobytes()
  return out


def _both_splits(name, options, data_dir):
  return {split: _records(builders.build_source(name, options, str(data_dir), split))
          for split in builders.SPLITS}


def _dataset_dirs(data_dir):
  """Every prepared (or half-prepared) version directory under data_dir."""
  return sorted(glob.glob(os.path.join(str(data_dir), "*", "*", "*")))


def _pixels(path, mode="RGB"):
  with Image.open(path) as im:
    return np.asarray(im.convert(mode), np.uint8)


@pytest.fixture
def mixed_corpus(corpus):
  """Real text (stdlib sources), binaries (the PNG/WAV fixtures) and an empty file."""
  root = corpus
  shutil.copytree(IMAGES, os.path.join(root, "binary", "images"))
  shutil.copy(os.path.join(AUDIO, "speech.wav"), os.path.join(root, "binary"))
  open(os.path.join(root, "empty.txt"), "wb").close()
  return root


# ------------------------------------------------------------------------------ byte_files


def test_byte_files_reads_back_every_file_exactly(mixed_corpus, tmp_path):
  options = {"files": mixed_corpus, "eval_fraction": 0.3, "split_seed": 3}
  splits = _both_splits("byte_files", options, tmp_path / "tfds")
  on_disk = {}
  for path in glob.glob(os.path.join(mixed_corpus, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        on_disk[os.path.relpath(path, mixed_corpus)] = f.read()
  assert len(on_disk) >= 10
  assert splits["train"].keys().isdisjoint(splits["validation"].keys())
  assert {**splits["train"], **splits["validation"]} == on_disk
  assert splits["train"] and splits["validation"]
  # The split is local_files.split_files's, by the hash of the relative path.
  train, evaluation = split_files(mixed_corpus, sorted(
      os.path.join(mixed_corpus, p) for p in on_disk), 0.3, 3)
  assert sorted(splits["validation"]) == sorted(os.path.relpath(p, mixed_corpus)
                                                for p in evaluation)
  assert len(splits["train"]) == len(train)
  assert "tensorflow" not in sys.modules


def test_splits_are_deterministic(mixed_corpus, tmp_path):
  options = {"files": mixed_corpus, "eval_fraction": 0.3}
  first = _both_splits("byte_files", options, tmp_path / "a")
  second = _both_splits("byte_files", options, tmp_path / "b")
  assert first == second
  # Another seed moves files between the splits, but never loses or duplicates one.
  other = _both_splits("byte_files", dict(options, split_seed=1), tmp_path / "a")
  assert sorted(other["validation"]) != sorted(first["validation"])
  assert {**other["train"], **other["validation"]} == {**first["train"], **first["validation"]}


def test_eval_files_give_a_separate_validation_set(corpus, tmp_path):
  options = {"files": os.path.join(corpus, "json"), "eval_files": os.path.join(corpus, "email")}
  splits = _both_splits("byte_files", options, tmp_path / "tfds")
  assert sorted(splits["train"]) == sorted(os.listdir(os.path.join(corpus, "json")))
  assert sorted(splits["validation"]) == sorted(os.listdir(os.path.join(corpus, "email")))


def test_options_hash_keeps_datasets_apart_and_prepares_once(corpus, tmp_path):
  data_dir = str(tmp_path / "tfds")
  a = {"files": corpus, "eval_fraction": 0.25}
  b = {"files": corpus, "eval_fraction": 0.5}
  assert builders.config_name("byte_files", a) != builders.config_name("byte_files", b)
  # Equivalent options (defaults spelled out, a relative path) give the same config.
  cwd = os.getcwd()
  try:
    os.chdir(os.path.dirname(corpus))
    same = {"files": os.path.basename(corpus), "eval_fraction": 0.25, "split_seed": 0,
            "eval_files": None}
    assert builders.config_name("byte_files", same) == builders.config_name("byte_files", a)
  finally:
    os.chdir(cwd)
  builders.build_source("byte_files", a, data_dir, "train")
  builders.build_source("byte_files", b, data_dir, "train")
  dirs = _dataset_dirs(data_dir)
  assert len(dirs) == 2
  stamp = os.path.getmtime(os.path.join(dirs[0], "dataset_info.json"))
  builders.build_source("byte_files", a, data_dir, "validation")  # reuses, does not rebuild
  assert _dataset_dirs(data_dir) == dirs
  assert os.path.getmtime(os.path.join(dirs[0], "dataset_info.json")) == stamp


def test_changed_source_files_are_detected(corpus, tmp_path):
  data_dir = str(tmp_path / "tfds")
  options = {"files": corpus, "eval_fraction": 0.25}
  builders.build_source("byte_files", options, data_dir, "train")
  with open(os.path.join(corpus, "json", "new.py"), "w") as f:
    f.write("x = 1\n")
  with pytest.raises(DataError, match="changed .* since byte_files was prepared"):
    builders.build_source("byte_files", options, data_dir, "train")
  # The prepared copy still reads where the source files are absent (another host).
  shutil.rmtree(corpus)
  assert len(builders.build_source("byte_files", options, data_dir, "train")) > 0


def test_source_pickles_and_feeds_grain(corpus, tmp_path):
  grain = pytest.importorskip("grain")
  source = builders.build_source("byte_files", {"files": corpus, "eval_fraction": 0.25},
                                 str(tmp_path / "tfds"), "train")
  again = pickle.loads(pickle.dumps(source))
  assert len(again) == len(source)
  assert again[0]["bytes"].tobytes() == source[0]["bytes"].tobytes()
  dataset = grain.MapDataset.source(source).map(lambda r: len(r["bytes"]))
  assert [dataset[i] for i in range(len(source))] == [len(source[i]["bytes"])
                                                      for i in range(len(source))]


# ---------------------------------------------------------------------------- image_folder


@pytest.mark.parametrize("order,patch_size", [("raster", None), ("patch", 48),
                                              ("patch", 192)])
def test_image_folder_gives_the_codec_bytes_of_each_image(order, patch_size, tmp_path):
  options = {"files": IMAGES, "image_size": 32, "order": order, "patch_size": patch_size,
             "eval_fraction": 0.3}
  splits = _both_splits("image_folder", options, tmp_path / "tfds")
  records = {**splits["train"], **splits["validation"]}
  assert sorted(records) == sorted(os.listdir(IMAGES))
  assert splits["train"].keys().isdisjoint(splits["validation"].keys())
  for name, data in records.items():
    assert len(data) == 32 * 32 * 3
    image = codecs.bytes_to_image(data, 32, 32, 3, order, patch_size)
    path = os.path.join(IMAGES, name)
    if name == "coffee.png":  # 48x40: resized to 32x32
      assert np.array_equal(image, builders.read_image(path, 32, 3))
    else:  # already 32x32: the file's own pixels, exactly
      assert np.array_equal(image, _pixels(path))
    assert data == codecs.image_to_bytes(image, order, patch_size).tobytes()
  assert "tensorflow" not in sys.modules


def test_image_folder_grayscale_and_resizing(tmp_path):
  options = {"files": os.path.join(IMAGES, "*.png"), "image_size": 16, "channels": 1,
             "order": "patch", "patch_size": 16, "eval_fraction": 0.0}
  records = _records(builders.build_source("image_folder", options, str(tmp_path), "train"))
  assert sorted(records) == ["astronaut.png", "camera.png", "coffee.png"]
  for name, data in records.items():
    assert len(data) == 16 * 16
    expected = Image.open(os.path.join(IMAGES, name)).convert("L").resize(
        (16, 16), Image.Resampling.BOX)
    image = codecs.bytes_to_image(data, 16, 16, 1, "patch", 16)
    assert np.array_equal(image[:, :, 0], np.asarray(expected))


def test_image_folder_skips_files_that_are_not_images(tmp_path):
  root = tmp_path / "mixed"
  shutil.copytree(IMAGES, root)
  (root / "README.txt").write_text("not an image")
  records = _records(builders.build_source(
      "image_folder", {"files": str(root), "image_size": 8, "eval_fraction": 0.0},
      str(tmp_path / "tfds"), "train"))
  assert sorted(records) == sorted(os.listdir(IMAGES))


def test_unreadable_image_names_the_file_and_leaves_nothing(tmp_path):
  root = tmp_path / "photos"
  shutil.copytree(IMAGES, root)
  shutil.copy(os.path.join(DATA, "bad", "truncated.png"), root)
  data_dir = tmp_path / "tfds"
  options = {"files": str(root), "image_size": 32, "eval_fraction": 0.0}
  with pytest.raises(DataError, match=r"truncated\.png: unreadable image"):
    builders.build_source("image_folder", options, str(data_dir), "train")
  assert _dataset_dirs(data_dir) == []
  assert not glob.glob(os.path.join(str(data_dir), "**", "*incomplete*"), recursive=True)
  assert not builders.make_builder("image_folder", options, str(data_dir)).is_prepared()
  # Fixing the folder and trying again works.
  os.remove(root / "truncated.png")
  assert len(builders.build_source("image_folder", options, str(data_dir), "train")) == 4


def test_impossible_patch_scan_is_refused_before_writing(tmp_path):
  options = {"files": IMAGES, "image_size": 30, "order": "patch", "patch_size": 48}
  with pytest.raises(DataError, match="do not tile a 30x30 image"):
    builders.build_source("image_folder", options, str(tmp_path), "train")
  with pytest.raises(DataError, match="patch_size is required"):
    builders.build_source("image_folder", {"files": IMAGES, "order": "patch"}, str(tmp_path),
                          "train")
  assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- audio_folder


@pytest.mark.parametrize("encoding", codecs.AUDIO_ENCODINGS)
def test_audio_folder_gives_the_encoded_speech(encoding, tmp_path):
  root = tmp_path / "speech"
  root.mkdir()
  shutil.copy(os.path.join(AUDIO, "speech.wav"), root / "a.wav")
  samples, rate = codecs.read_wav(os.path.join(AUDIO, "speech.wav"))
  codecs.write_wav(root / "b.wav", samples[:4000], rate)
  options = {"files": str(root), "encoding": encoding, "sample_rate": 8000,
             "eval_fraction": 0.0}
  records = _records(builders.build_source("audio_folder", options, str(tmp_path / "t"),
                                           "train"))
  assert sorted(records) == ["a.wav", "b.wav"]
  assert records["a.wav"] == codecs.audio_to_bytes(samples, encoding).tobytes()
  assert records["b.wav"] == codecs.audio_to_bytes(samples[:4000], encoding).tobytes()
  if encoding == "pcm16":  # the WAV file's own sample bytes
    with wave.open(os.path.join(AUDIO, "speech.wav"), "rb") as f:
      assert records["a.wav"] == f.readframes(f.getnframes())
  builder = builders.make_builder("audio_folder", options, str(tmp_path / "t"))
  assert builder.info.metadata["sample_rates"] == [8000]


def test_unsupported_wav_names_the_file_and_leaves_nothing(tmp_path):
  root = tmp_path / "speech"
  root.mkdir()
  shutil.copy(os.path.join(AUDIO, "speech.wav"), root)
  shutil.copy(os.path.join(DATA, "bad", "speech_24bit.wav"), root)
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError, match=r"speech_24bit\.wav: 24-bit WAV samples are not "
                     r"supported"):
    builders.build_source("audio_folder", {"files": str(root), "eval_fraction": 0.0},
                          str(data_dir), "train")
  assert _dataset_dirs(data_dir) == []
  with pytest.raises(DataError, match=r"speech\.wav: sample rate 8000 Hz, expected 16000"):
    builders.build_source("audio_folder", {"files": os.path.join(AUDIO, "*.wav"),
                                           "sample_rate": 16000}, str(data_dir), "train")


# ---------------------------------------------------------------------------------- errors


def test_empty_folder_is_refused_and_leaves_nothing(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  data_dir = tmp_path / "tfds"
  for name in builders.BUILDERS:
    with pytest.raises(DataError, match="no files match"):
      builders.build_source(name, {"files": str(empty)}, str(data_dir), "train")
  with pytest.raises(DataError, match="no PNG/JPG/JPEG files among the 1 file"):
    builders.build_source("image_folder", {"files": os.path.join(AUDIO, "*")}, str(data_dir),
                          "train")
  assert not data_dir.exists() or _dataset_dirs(data_dir) == []


def test_unknown_dataset_lists_ours(tmp_path):
  with pytest.raises(DataError, match=r"unknown dataset 'no_such_set'.*byte_files.*"
                     r"image_folder.*audio_folder.*TFDS catalog.*pg19"):
    builders.build_source("no_such_set", {}, str(tmp_path), "train")


def test_bad_options_and_missing_split(corpus, tmp_path):
  with pytest.raises(DataError, match=r"unknown option\(s\) \['image_size'\] for builder "
                     r"'byte_files'"):
    builders.build_source("byte_files", {"files": corpus, "image_size": 8}, str(tmp_path),
                          "train")
  with pytest.raises(DataError, match="needs option files"):
    builders.build_source("byte_files", {}, str(tmp_path), "train")
  with pytest.raises(DataError, match="eval_fraction must be in"):
    builders.build_source("byte_files", {"files": corpus, "eval_fraction": 1.0},
                          str(tmp_path), "train")
  with pytest.raises(DataError, match="encoding must be one of"):
    builders.build_source("audio_folder", {"files": AUDIO, "encoding": "mp3"}, str(tmp_path),
                          "train")
  options = {"files": corpus, "eval_fraction": 0.0}
  files = glob.glob(os.path.join(corpus, "**", "*.py"), recursive=True)
  assert len(builders.build_source("byte_files", options, str(tmp_path), "train")) == len(files)
  with pytest.raises(DataError, match="no 'validation' split"):
    builders.build_source("byte_files", options, str(tmp_path), "validation")
  assert len(builders.build_source("byte_files", options, str(tmp_path), "train[:3]")) == 3


# ------------------------------------------------------------------ catalog names (prepared)


def test_our_dataset_reads_back_by_catalog_style_name(mixed_corpus, tmp_path):
  data_dir = str(tmp_path / "tfds")
  options = {"files": mixed_corpus, "eval_fraction": 0.3}
  direct = _both_splits("byte_files", options, data_dir)
  name = "byte_files/" + builders.config_name("byte_files", options)
  for split in builders.SPLITS:
    source = builders.build_source(name, None, data_dir, split)
    assert isinstance(source, builders.FeatureBytesSource)
    by_catalog = [source[i]["bytes"].tobytes() for i in range(len(source))]
    assert sorted(by_catalog) == sorted(direct[split].values())
  source = builders.build_source(name, {"feature": "bytes"}, data_dir, "train[:2]")
  assert len(source) == 2
  assert "tensorflow" not in sys.modules


class CatalogLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A stand-in for a prepared catalog dataset (like imagenet_resized): image, text, label."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="32x32")]
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "caption": tfds.features.Text(),
        "label": tfds.features.ClassLabel(num_classes=4),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, name in enumerate(["astronaut.png", "chelsea.jpg"]):
      buf = io.BytesIO()  # encoded by Pillow: TFDS would need TensorFlow to encode arrays
      Image.fromarray(_pixels(os.path.join(IMAGES, name))).save(buf, format="PNG")
      yield name, {"image": buf.getvalue(), "caption": f"photo {name} – ünïcode",
                   "label": i}


def test_catalog_dataset_features_become_bytes(tmp_path):
  data_dir = str(tmp_path / "tfds")
  CatalogLike(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_dir=str(tmp_path / "dl"),
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  expected = {f"photo {n} – ünïcode": _pixels(os.path.join(IMAGES, n))
              for n in ["astronaut.png", "chelsea.jpg"]}
  patch = builders.build_source("catalog_like/32x32", {"feature": "image", "order": "patch",
                                                       "patch_size": 48}, data_dir, "train")
  text = builders.build_source("catalog_like/32x32", {"feature": "caption"}, data_dir,
                               "train")
  assert len(patch) == len(text) == 2
  for i in range(2):
    caption = text[i]["bytes"].tobytes().decode("utf-8")
    pixels = codecs.bytes_to_image(patch[i]["bytes"], 32, 32, 3, "patch", 48)
    assert np.array_equal(pixels, expected[caption])
    assert patch[i]["path"] == f"catalog_like/32x32/train/{i}"
  # The image is the only media feature, so it is found without naming it.
  raster = builders.build_source("catalog_like", {}, data_dir, "train")
  for i, record in enumerate(raster.__getitems__([0, 1])):
    caption = text[i]["bytes"].tobytes().decode("utf-8")
    assert record["bytes"].tobytes() == expected[caption].tobytes()
  assert pickle.loads(pickle.dumps(patch))[1]["bytes"].tobytes() == patch[1]["bytes"].tobytes()
  with pytest.raises(DataError, match="do not tile a 32x32 image"):
    builders.build_source("catalog_like", {"order": "patch", "patch_size": 75}, data_dir,
                          "train")
  with pytest.raises(DataError, match=r"no feature 'pixels'; its features are"):
    builders.build_source("catalog_like", {"feature": "pixels"}, data_dir, "train")
  with pytest.raises(DataError, match="cannot be read as bytes"):
    builders.build_source("catalog_like", {"feature": "label"}, data_dir, "train")
  with pytest.raises(DataError, match=r"unknown option\(s\) \['image_size'\]"):
    builders.build_source("catalog_like", {"image_size": 8}, data_dir, "train")
  with pytest.raises(DataError, match="has no split 'test'"):
    builders.build_source("catalog_like", {}, data_dir, "test")
  assert "tensorflow" not in sys.modules


def test_catalog_dataset_not_prepared_says_so(tmp_path):
  with pytest.raises(DataError, match=r"TFDS dataset 'imagenet_resized/64x64' is not prepared "
                     r"in data_dir=.*Nothing is downloaded at run time"):
    builders.build_source("imagenet_resized/64x64", {}, str(tmp_path), "train")
  with pytest.raises(DataError, match="'pg19' is not prepared"):
    builders.build_source("pg19", {"feature": "book_text"}, str(tmp_path), "train")
  assert os.listdir(tmp_path) == []
