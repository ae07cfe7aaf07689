"""Training end to end on each TFDS builder: text/code files, images, audio."""

import os

import numpy as np

from megabyte_jax.data import load_byte_data, training_batches
from megabyte_jax.data.codecs import bytes_to_image, image_to_bytes
from megabyte_jax.experiment import base_config
from megabyte_jax.train import train_and_evaluate

from conftest import REPO

DATA = os.path.join(REPO, "tests", "data")


def _config(tmp_path, name, files, seq_len, patch_size, **data):
  config = base_config("megabyte", seq_len=seq_len, patch_size=patch_size,
                       global_dim=4 * patch_size, global_layers=1, global_heads=2,
                       local_dim=16, local_layers=1, local_heads=2)
  config.data.update(name=name, files=files, data_dir=str(tmp_path / "tfds"),
                     chunk_bytes=2 ** 14, **data)
  t = config.train
  t.steps, t.batch_size, t.warmup_steps, t.log_every = 4, 2, 1, 2
  t.eval_every, t.checkpoint_every, t.tensorboard = 0, 4, False
  config.sample.num_bytes = 0
  return config


def test_byte_files_source_trains(corpus, tmp_path):
  config = _config(tmp_path, "byte_files", corpus, 32, 4, eval_fraction=0.3)
  final = train_and_evaluate(config, str(tmp_path / "run"))
  assert final["step"] == 4 and final["eval_bytes"] > 0
  # The validation split holds the same bytes as the local-files reader's split.
  local = config.data.copy_and_resolve_references()
  local.name = "local_files"
  assert load_byte_data(local, 32).eval.num_bytes == final["eval_bytes"]


def test_image_folder_in_patch_scan_trains_on_whole_images(tmp_path):
  images = os.path.join(DATA, "images")
  # 8x8 RGB images = 192 bytes; patches of 2x2 pixels = 12 bytes, one image per window.
  config = _config(tmp_path, "image_folder", images, 192, 12, image_size=8, order="patch",
                   eval_files=images, separator=-1)
  data = load_byte_data(config.data, 192, 12)
  first = data.train[0]["bytes"]
  assert first.shape == (192,)
  image = bytes_to_image(first, 8, 8, 3, order="patch", patch_size=12)
  np.testing.assert_array_equal(image_to_bytes(image, "patch", 12), first)
  # Without a separator every training window is exactly one whole image.
  images_bytes = {bytes(data.train[i]["bytes"]) for i in range(len(data.train))}
  it = iter(training_batches(data.train, 192, 2, seed=0, separator=None, chunk_bytes=192 * 8))
  for _ in range(6):
    assert all(bytes(w) in images_bytes for w in next(it))
  it.close()
  final = train_and_evaluate(config, str(tmp_path / "run"))
  assert final["eval_bytes"] == 192 * data.eval_files


def test_audio_folder_trains(tmp_path):
  config = _config(tmp_path, "audio_folder", os.path.join(DATA, "audio"), 64, 8,
                   eval_files=os.path.join(DATA, "audio"), encoding="mulaw8")
  final = train_and_evaluate(config, str(tmp_path / "run"))
  assert final["step"] == 4 and final["eval_bytes"] > 10_000
