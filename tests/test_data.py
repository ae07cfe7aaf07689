"""The local-files byte dataset."""

import os

import ml_collections
import numpy as np
import pytest

from megabyte_jax import DataError
from megabyte_jax.data import load_byte_data, load_eval_files, separator_of
from megabyte_jax.data.local_files import (eval_windows, read_documents,
                                           resolve_files, split_files, stdlib_root)


def _data_cfg(files, **changes):
  cfg = ml_collections.ConfigDict(dict(name="local_files", files=files, eval_files=None,
                                       eval_fraction=0.3, split_seed=0, separator=0))
  cfg.update(changes)
  return cfg


def _all_bytes(corpus):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(corpus) for f in fs)


def test_resolve_directory_and_recursive_glob(corpus):
  root, files = resolve_files(corpus)
  assert root == corpus and len(files) == len(set(files)) > 4
  _, globbed = resolve_files(os.path.join(corpus, "**", "*.py"))
  assert globbed == files
  _, only_json = resolve_files(os.path.join(corpus, "json", "*.py"))
  assert 0 < len(only_json) < len(files)


def test_empty_glob_is_a_clear_error(tmp_path):
  with pytest.raises(DataError, match="no files match"):
    resolve_files(str(tmp_path / "nothing" / "**" / "*.txt"))


def test_stdlib_corpus_excludes_installed_packages():
  root, files = resolve_files("stdlib")
  assert root == stdlib_root() and len(files) > 500
  assert not any("site-packages" in f or "dist-packages" in f for f in files)
  assert all(f.endswith(".py") for f in files)


def test_split_is_deterministic_disjoint_and_complete(corpus):
  root, files = resolve_files(corpus)
  train, evaluation = split_files(root, files, 0.3, seed=0)
  assert sorted(train + evaluation) == files and not set(train) & set(evaluation)
  assert (train, evaluation) == split_files(root, files, 0.3, seed=0)
  # The split depends on paths relative to the root, not on where the corpus lives.
  moved = [f.replace(root, "/elsewhere/corpus") for f in files]
  _, moved_eval = split_files("/elsewhere/corpus", moved, 0.3, seed=0)
  assert [os.path.relpath(f, "/elsewhere/corpus") for f in moved_eval] == [
      os.path.relpath(f, root) for f in evaluation]
  with pytest.raises(DataError, match="eval_fraction"):
    split_files(root, files, 1.5)


def test_eval_windows_cover_every_byte_once(corpus):
  _, files = resolve_files(corpus)
  docs = read_documents(files)
  windows = eval_windows(docs, seq_len=64, shuffle_seed=3)
  assert windows.num_bytes == sum(len(d) for d in docs) == _all_bytes(corpus)
  restored = sorted(bytes(t[m > 0].astype(np.uint8)) for t, m in zip(windows.tokens, windows.mask))
  expected = sorted(bytes(d[i:i + 64]) for d in docs for i in range(0, len(d), 64))
  assert restored == expected
  batches = list(windows.batches(batch_size=7))
  assert all(t.shape == (7, 64) for t, _ in batches)
  assert sum(m.sum() for _, m in batches) == windows.num_bytes
  assert sum(m.sum() for _, m in windows.batches(7, limit=3)) <= 3 * 64


def test_load_eval_files_scores_any_bytes(tmp_path):
  (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 3)
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\xff" * 50)
  windows, count = load_eval_files(str(tmp_path / "**" / "*.bin"), 64)
  assert count == 2 and windows.num_bytes == 768 + 100


def test_load_byte_data_splits_and_reports(corpus):
  data = load_byte_data(_data_cfg(corpus), seq_len=64)
  assert data.train_files + data.eval_files == len(resolve_files(corpus)[1])
  assert data.eval_files > 0 and data.train_files > 0
  assert len(data.train) == data.train_files
  assert data.train_bytes + data.eval.num_bytes == _all_bytes(corpus)


def test_load_byte_data_separate_eval_files(corpus):
  cfg = _data_cfg(os.path.join(corpus, "email", "*.py"),
                  eval_files=os.path.join(corpus, "json", "*.py"))
  data = load_byte_data(cfg, seq_len=64)
  assert data.eval_files == len(resolve_files(os.path.join(corpus, "json", "*.py"))[1])


def test_empty_split_and_unknown_source_are_clear_errors(corpus, tmp_path):
  (tmp_path / "one.txt").write_text("hello")
  with pytest.raises(DataError, match="validation split .* is empty"):
    load_byte_data(_data_cfg(str(tmp_path), eval_fraction=0.0), seq_len=64)
  with pytest.raises(DataError, match="unknown dataset 'tfds'"):
    load_byte_data(_data_cfg(corpus, name="tfds", data_dir=str(tmp_path / "tfds")), seq_len=64)


def test_unreadable_file_is_named(tmp_path):
  missing = str(tmp_path / "gone.txt")
  with pytest.raises(DataError, match="gone.txt"):
    read_documents([missing])


def test_separator_of_reads_minus_one_and_none_as_no_separator():
  import ml_collections   # pylint: disable=g-import-not-at-top
  assert separator_of(ml_collections.ConfigDict({"separator": 10})) == 10
  assert separator_of(ml_collections.ConfigDict({"separator": 0})) == 0
  assert separator_of(ml_collections.ConfigDict({"separator": -1})) is None
  assert separator_of(ml_collections.ConfigDict({"separator": None})) is None
  assert separator_of(ml_collections.ConfigDict({})) == 0
