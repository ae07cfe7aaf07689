"""Work directories (issue 22): remote paths through epath (an offline fake of gs://), safe
resume from the command line, --noprogress log lines, small corpora split by bytes,
parameters-only export."""

import json
import os

import ml_collections
import numpy as np
import pytest

from conftest import run_module
from megabyte_jax.training import checkpoint as checkpoint_lib
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.errors import ConfigError, DataError
from megabyte_jax.training.metrics import MetricWriter, read_metrics

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def fake_gcs():
  """`gs://` served by an in-memory fsspec filesystem (what gcsfs would do, offline)."""
  from fsspec.implementations.memory import MemoryFileSystem

  class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store, pseudo_dirs = {}, [""]

  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  yield FakeGCS
  FakeGCS.store.clear()


def _config():
  from megabyte_jax.configs.tiny import get_config
  return get_config()


def test_remote_workdir_config_and_metrics_go_through_epath(fake_gcs, tmp_path, monkeypatch):
  workdir = "gs://bucket/run"
  config = _config()
  path = workdir_lib.save_config(workdir, config)
  assert path == "gs://bucket/run/config.json"
  assert fake_gcs.store, "nothing reached the (fake) bucket"
  assert not os.path.exists("gs:")   # no local folder named after the URI
  assert workdir_lib.load_config(workdir).to_dict() == config.to_dict()
  longer = _config()
  longer.train.steps = 99
  assert workdir_lib.resolve_config(workdir, longer).train.steps == 99
  writer = MetricWriter(workdir, tensorboard=True)
  writer.write(1, {"train_bpb": 3.0})
  writer.close()
  writer = MetricWriter(workdir, tensorboard=False)   # a resumed run continues the file
  writer.write(2, {"train_bpb": 2.5})
  writer.close()
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]


def test_remote_result_record_goes_through_epath(fake_gcs):
  from megabyte_jax.training.result import TrainResult
  result = TrainResult(step=3, params=10, eval_bpb=2.0, sample="x", wall_s=1.5)
  assert result.save("gs://bucket/run") == "gs://bucket/run/result.json"
  assert not os.path.exists("gs:")   # no local folder named after the URI
  assert TrainResult.load("gs://bucket/run") == result


def test_saved_mesh_rules_come_back_as_pairs(tmp_path):
  config = _config()
  config.mesh_rules = (("mlp", None), ("embed", ("data", "fsdp")))
  workdir_lib.save_config(str(tmp_path), config)
  loaded = workdir_lib.load_config(str(tmp_path))
  assert loaded.mesh_rules == config.mesh_rules and loaded.to_dict() == config.to_dict()
  older = json.loads((tmp_path / "config.json").read_text())
  del older["mesh_rules"]                            # a run saved before mesh_rules existed
  (tmp_path / "config.json").write_text(json.dumps(older))
  assert workdir_lib.load_config(str(tmp_path)).mesh_rules == ()


def test_remote_checkpoint_directory_stays_a_uri_and_manifests_use_epath(fake_gcs,
                                                                          monkeypatch):
  """Orbax itself needs a real bucket (it asks GCS about the bucket), so its manager is
  replaced by a recorder; our own manifest code runs on the fake bucket."""
  from etils import epath
  seen = {}

  class Recorder:
    def __init__(self, directory, **kwargs):
      seen["directory"] = directory

    def all_steps(self):
      return [3]

  monkeypatch.setattr(checkpoint_lib.ocp, "CheckpointManager", Recorder)
  ckpt = checkpoint_lib.Checkpointer("gs://bucket/run")
  assert ckpt.directory == "gs://bucket/run/checkpoints"
  assert os.fspath(seen["directory"]) == "gs://bucket/run/checkpoints"
  step = epath.Path(ckpt.step_dir(3))
  (step / "state").mkdir(parents=True, exist_ok=True)
  (step / "state" / "data.bin").write_bytes(b"abc")
  ckpt._write_manifest(3, True)
  assert ckpt.manifest(3)["files"] == {
      "state/data.bin": [3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]}
  ckpt.verify(3)
  (step / "state" / "data.bin").write_bytes(b"abd")
  with pytest.raises(checkpoint_lib.CheckpointError, match="checksum"):
    ckpt.verify(3)


def test_a_changed_data_section_is_refused_unless_allowed(tmp_path):
  workdir = str(tmp_path / "run")
  config = _config()
  config.data.files = "/some/where"
  workdir_lib.save_config(workdir, config)
  other = _config()
  with pytest.raises(DataError, match="trained on other data.*allow_data_change"):
    workdir_lib.resolve_config(workdir, other)
  assert workdir_lib.resolve_config(workdir, other, allow_data_change=True) is other
  faster = _config()
  faster.data.files = "/some/where"
  faster.data.read_threads = 7   # how fast, not which bytes: allowed
  assert workdir_lib.resolve_config(workdir, faster) is faster


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  afile = tmp_path / "f"
  afile.write_text("x")
  with pytest.raises(ConfigError, match="is a file, not a directory"):
    workdir_lib.resolve_config(str(afile), _config())
  proc = run_module("megabyte_jax.train", "--config=tiny", f"--workdir={afile}", check=False)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
      f"error: --workdir {afile} is a file, not a directory; give a directory (it is created "
      f"when missing)"]


def test_a_single_file_and_a_few_files_are_split_by_bytes(tmp_path):
  from megabyte_jax.data import load_byte_data, split_documents
  from megabyte_jax.experiment import base_config
  one = tmp_path / "enwik.txt"
  one.write_bytes(bytes(range(256)) * 40)   # 10,240 bytes
  cfg = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                    global_heads=2, local_dim=16, local_layers=1, local_heads=2).data
  cfg.files, cfg.eval_fraction = str(one), 0.1
  train, evaluation, names, by_bytes = split_documents(cfg)
  assert by_bytes and names == [str(one)]
  assert len(evaluation[0]) == 1024 and len(train[0]) == 9216
  assert bytes(train[0]) + bytes(evaluation[0]) == one.read_bytes()   # no byte in both
  data = load_byte_data(cfg, seq_len=32)
  assert data.eval.num_bytes == 1024 and data.train_bytes == 9216
  few = tmp_path / "few"
  few.mkdir()
  for i in range(3):
    (few / f"{i}.txt").write_bytes(b"%d" % i * 500)
  cfg.files = str(few)
  train, evaluation, _, by_bytes = split_documents(cfg)
  assert by_bytes and [len(d) for d in evaluation] == [50, 50, 50]


@pytest.mark.parametrize("size, fraction, held", [
    (1001, 0.1, 101), (5, 0.1, 1), (1, 0.1, 1), (0, 0.1, 0), (10, 0.1, 1), (100, 0.07, 7),
    (10240, 0.1, 1024), (3, 0.5, 2), (7, 1.0, 7)])
def test_a_byte_split_holds_out_the_ceiling_of_the_fraction(size, fraction, held):
  """The last ceil(size * fraction) bytes validate, as the fraction is written (100 bytes
  at 0.07 hold out 7, although 100 * 0.07 is 7.000000000000001 in floating point); any
  non-empty file gives at least one validation byte."""
  from megabyte_jax.data import split_by_bytes
  doc = np.arange(size, dtype=np.uint8)
  train, evaluation = split_by_bytes([doc], fraction)
  assert len(evaluation[0]) == held and len(train[0]) == size - held
  np.testing.assert_array_equal(np.concatenate([train[0], evaluation[0]]), doc)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A 4-step tiny run on one file, from the command line with --noprogress."""
  root = tmp_path_factory.mktemp("run")
  corpus = root / "corpus.py"
  with open(os.path.join(os.path.dirname(json.__file__), "decoder.py"), "rb") as f:
    corpus.write_bytes(f.read())
  workdir = str(root / "w")
  proc = run_module("megabyte_jax.train", "--config=tiny", f"--workdir={workdir}",
                    f"--config.data.files={corpus}", "--config.train.steps=4",
                    "--config.train.log_every=2", "--config.train.warmup_steps=1",
                    "--config.sample.num_bytes=0", "--noprogress")
  return workdir, str(corpus), proc


def test_noprogress_prints_a_line_every_log_every_steps(tiny_run):
  _, _, proc = tiny_run
  lines = [l for l in proc.stdout.splitlines() if l.startswith("step ")]
  assert [l.split(":")[0] for l in lines] == ["step 2", "step 4"], proc.stdout
  assert "bpb" in lines[0] and "\r" not in proc.stdout + proc.stderr
  assert "from 1 training document, " in proc.stdout     # one file, split by bytes
  assert "validation bytes from 1 document; " in proc.stdout


def test_workdir_alone_continues_with_overrides_and_a_changed_corpus_is_refused(tiny_run):
  workdir, corpus, _ = tiny_run
  proc = run_module("megabyte_jax.train", f"--workdir={workdir}", "--config.train.steps=6",
                    "--noprogress")
  assert "resuming at step 4 of 6" in proc.stdout
  saved = workdir_lib.load_config(workdir)
  assert saved.train.steps == 6 and saved.data.files == corpus
  proc = run_module("megabyte_jax.train", "--config=tiny", f"--workdir={workdir}",
                    "--config.train.steps=8", check=False)
  assert proc.returncode == 1 and "trained on other data" in proc.stderr
  assert workdir_lib.load_config(workdir).train.steps == 6   # config.json untouched
  proc = run_module("megabyte_jax.train", f"--workdir={os.path.dirname(workdir)}/none",
                    "--config.train.steps=8", check=False)
  assert proc.returncode == 1 and "overrides need a config" in proc.stderr


def test_a_saved_config_json_is_a_config(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  config = workdir_lib.load_config_file(os.path.join(workdir, "config.json"))
  assert isinstance(config, ml_collections.ConfigDict) and config.model.seq_len == 64


def test_params_only_export_round_trips(tiny_run, tmp_path):
  import megabyte_jax
  workdir, _, _ = tiny_run
  trained = megabyte_jax.load_trained(workdir)
  assert isinstance(trained, megabyte_jax.LoadedModel) and trained.step >= 4
  path = megabyte_jax.export_params(workdir, str(tmp_path / "p.msgpack"))
  exported = megabyte_jax.load_exported(path)     # the same shape as load_trained's
  assert isinstance(exported, megabyte_jax.LoadedModel) and exported.step == trained.step
  assert exported.config.to_dict() == trained.config.to_dict()
  assert type(exported.model) is type(trained.model)
  tokens = np.zeros((1, 64), np.int32)
  np.testing.assert_array_equal(trained.model.apply(trained.variables, tokens),
                                exported.model.apply(exported.variables, tokens))
  # The tuples these returned before still unpack, with a deprecation warning.
  with pytest.warns(DeprecationWarning, match=r"\(config, model, params, step\)"):
    config, model, params, step = megabyte_jax.load_trained(workdir)
  assert (config.to_dict(), type(model), step) == (trained.config.to_dict(),
                                                   type(trained.model), trained.step)
  with pytest.warns(DeprecationWarning, match=r"\(model, params, config\)"):
    model2, params2, config2 = megabyte_jax.load_exported(path)
  assert config2 is not None and type(model2) is type(model)
  np.testing.assert_array_equal(model2.apply({"params": params2}, tokens),
                                trained.model.apply({"params": params}, tokens))
  small = megabyte_jax.export_params(workdir, str(tmp_path / "b.msgpack"), dtype="bfloat16")
  assert os.path.getsize(small) < os.path.getsize(path)
