"""A resumed run never rewrites its history: config.json is the config as trained, each
resume's changes go to config_history.jsonl, a finished run changes nothing, and a batch
change is refused unless allowed. The curves of such a run plot against steps and bytes."""

import json
import os
import shutil

import numpy as np
import pytest

from megabyte_jax.errors import DataError
from megabyte_jax.experiment import base_config
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training import history
from megabyte_jax.training.result import TrainResult
from megabyte_jax.training.workdir import load_config

SEQ_LEN = 32


def _config(corpus, steps, batch_size=4, learning_rate=1e-3):
  config = base_config("megabyte", seq_len=SEQ_LEN, patch_size=4, global_dim=32,
                       global_layers=1, global_heads=2, local_dim=16, local_layers=1,
                       local_heads=2)
  config.data.files, config.data.eval_fraction, config.data.chunk_bytes = corpus, 0.3, 2 ** 14
  config.train.update(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                      warmup_steps=1, log_every=2, eval_every=0, checkpoint_every=2,
                      tensorboard=False, final_eval=False)
  config.sample.num_bytes = 0
  return config


def _snapshot(workdir):
  """Every file of the run (checkpoints included) with its bytes."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def _changes(workdir):
  return [(e["step"], e["field"], e["old"], e["new"]) for e in history.read_history(workdir)]


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory):
  """A 4-step run extended to 6 steps with another learning rate."""
  corpus = tmp_path_factory.mktemp("corpus")
  for name in ("a", "b", "c"):
    (corpus / f"{name}.py").write_bytes(bytes(range(32, 127)) * 40)
  workdir = str(tmp_path_factory.mktemp("run") / "run")
  train_and_evaluate(_config(str(corpus), steps=4), workdir)
  assert history.read_history(workdir) == []      # a fresh run has no history
  result = train_and_evaluate(_config(str(corpus), steps=6, learning_rate=2e-3), workdir)
  return str(corpus), workdir, result


def test_a_resume_records_what_it_changed_and_config_json_is_as_trained(extended_run):
  corpus, workdir, result = extended_run
  assert result.step == 6
  assert _changes(workdir) == [(4, "train.learning_rate", 1e-3, 2e-3), (4, "train.steps", 4, 6)]
  saved = load_config(workdir)
  assert saved.train.steps == 6 and saved.train.learning_rate == 2e-3
  before = history.config_at(workdir, 3)             # the config of the steps before
  assert before.train.steps == 4 and before.train.learning_rate == 1e-3
  assert history.config_at(workdir, 4).to_dict() == saved.to_dict()
  assert before.model.to_dict() == saved.model.to_dict()   # tuples come back as tuples


def test_a_finished_run_says_so_and_changes_nothing(extended_run, capsys):
  corpus, workdir, _ = extended_run
  capsys.readouterr()
  files = _snapshot(workdir)
  # The original config again (fewer steps, the old learning rate): finished at step 6.
  again = train_and_evaluate(_config(corpus, steps=4), workdir)
  out = capsys.readouterr().out
  assert f"{workdir} is finished: trained to step 6 (train.steps=4 asks for no more" in out
  assert "resuming" not in out and "Nothing changed" in out
  assert again == TrainResult.load(workdir) and again.step == 6
  # Its own config: finished at exactly train.steps, the same.
  train_and_evaluate(None, workdir)
  assert "is finished: trained to step 6 of 6" in capsys.readouterr().out
  assert _snapshot(workdir) == files                 # not a byte changed, checkpoints included


def test_a_batch_change_is_refused_unless_allowed_and_plots_by_bytes(extended_run, tmp_path):
  from megabyte_jax import plot
  corpus, original, _ = extended_run
  workdir = str(tmp_path / "copy")
  shutil.copytree(original, workdir)
  files = _snapshot(workdir)
  bigger = _config(corpus, steps=8, batch_size=8, learning_rate=2e-3)
  with pytest.raises(DataError, match=r"train\.batch_size: 4 -> 8: its batches from here on "
                                      r"would not be those of an uninterrupted run"):
    train_and_evaluate(bigger, workdir)
  assert _snapshot(workdir) == files
  assert train_and_evaluate(bigger, workdir, allow_data_change=True).step == 8
  assert _changes(workdir)[-2:] == [(6, "train.batch_size", 4, 8), (6, "train.steps", 6, 8)]
  curves = plot.read_curves(workdir)
  assert list(curves.train_steps) == [2, 4, 6, 8]
  np.testing.assert_array_equal(curves.bytes_at(curves.train_steps),
                                [2 * 4 * SEQ_LEN, 4 * 4 * SEQ_LEN, 6 * 4 * SEQ_LEN,
                                 6 * 4 * SEQ_LEN + 2 * 8 * SEQ_LEN])
  figure = plot.draw([plot.read_curves(original), curves])
  by_step, by_bytes = figure.axes
  labels = [line.get_label() for line in by_step.get_lines()]
  assert labels == ["run: train", "copy: train"]
  assert by_bytes.get_lines()[1].get_xdata()[-1] == 6 * 4 * SEQ_LEN + 2 * 8 * SEQ_LEN
  path = plot.plot_runs([curves], str(tmp_path / "bpb.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_history_file_and_changes(tmp_path):
  config = base_config("transformer", seq_len=32, dim=32, layers=1, heads=2)
  other = base_config("transformer", seq_len=32, dim=32, layers=1, heads=2)
  other.mesh_rules = (("mlp", None),)
  other.train.steps = 7
  assert history.config_changes(config, other) == [
      ("mesh_rules", [], [["mlp", None]]), ("train.steps", 1000, 7)]
  assert history.config_changes(config, config) == []
  workdir = str(tmp_path / "w")
  assert history.record_config(workdir, config, 0) == []          # nothing saved yet
  entries = history.record_config(workdir, other, 5)
  assert [(e["step"], e["field"]) for e in entries] == [(5, "mesh_rules"), (5, "train.steps")]
  with open(history.history_path(workdir), "a", encoding="utf-8") as f:
    f.write('{"step": 9, "fie')                     # a torn last line is skipped
  assert len(history.read_history(workdir)) == 2
  assert load_config(workdir).mesh_rules == (("mlp", None),)
  assert history.config_at(workdir, 4).train.steps == 1000
  with open(history.history_path(workdir), encoding="utf-8") as f:
    assert all(json.loads(line)["time"] for line in f.read().splitlines()[:2])
