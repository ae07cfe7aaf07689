"""The study driver's per-model settings: a model's own context and batch (`seq_len`,
`batch_size`), its own budgets, the `scaling` variant of the code study, and the tables and
plots of studies whose models differ in context, budgets and learning rate."""

import json
import os
import shutil
import sysconfig

import pytest

from experiments import plot_results
from experiments.study import __main__ as study_cli
from experiments.study import records as records_lib
from experiments.study import runner
from experiments.study import spec as spec_lib
from experiments.studies import code_equal_compute
from megabyte_jax.models import build_model


@pytest.fixture
def packages_root(tmp_path):
  """A fake site-packages: two packages of real stdlib code (`beta` is held out)."""
  root = tmp_path / "site-packages"
  stdlib = sysconfig.get_paths()["stdlib"]
  for package, source in (("alpha", "json"), ("beta", "email")):
    os.makedirs(root / package)
    names = sorted(n for n in os.listdir(os.path.join(stdlib, source)) if n.endswith(".py"))
    for name in names[:3]:
      shutil.copy(os.path.join(stdlib, source, name), root / package / name)
  return str(root)


def _study(**changes):
  """A tiny code study: a transformer at the study's 32 x 4 and a MEGABYTE at its own 64 x 2
  (the same 128 bytes per step), each at its own budget."""
  study = {
      "name": "ctx",
      "corpus": {"kind": "packages", "roots": "x", "eval_target_bytes": 20_000,
                 "max_train_bytes": 400_000, "eval_packages": ["beta"]},
      "seq_len": 32, "batch_size": 4, "eval_batch_size": 16,
      "train": {"learning_rate": 3e-3, "warmup_fraction": 0.1},
      "quick_evals": 2, "eval_batches": 1,
      "budgets": [4e7, 1.2e8],
      "models": [
          {"name": "transformer", "kind": "transformer", "dim": 16, "layers": 1, "heads": 2,
           "budgets": [4e7]},
          {"name": "megabyte-p4-long", "kind": "megabyte", "patch_size": 4, "global_dim": 32,
           "global_layers": 1, "global_heads": 2, "local_dim": 16, "local_layers": 1,
           "local_heads": 2, "seq_len": 64, "batch_size": 2, "budgets": [1.2e8],
           "series": "megabyte-p4"},
      ],
  }
  study.update(changes)
  return study


def test_a_models_context_and_batch_reach_its_config_steps_and_flops():
  study = _study()
  spec_lib.check_study(study)
  transformer, long = study["models"]
  config = spec_lib.experiment_config(study, long, 10, "T", "E")
  assert (config.model.seq_len, config.train.batch_size) == (64, 2)
  assert config.eval.batch_size == 16 * 32 // 64        # the same bytes per eval batch
  assert spec_lib.model_eval_batch_size(study, dict(long, eval_batch_size=3)) == 3
  config = spec_lib.experiment_config(study, transformer, 10, "T", "E")
  assert (config.model.seq_len, config.train.batch_size, config.eval.batch_size) == (32, 4, 16)
  costs = spec_lib.model_costs(study)
  assert costs["megabyte-p4-long"].seq_len == 64 and costs["transformer"].seq_len == 32
  # The FLOPs per byte at the model's own context: more attention than at the study's.
  _, cfg = build_model(spec_lib.model_config(study, dict(long, seq_len=32), 1).model)
  from megabyte_jax.flops import model_cost
  assert costs["megabyte-p4-long"].attention_flops_per_byte \
      > model_cost(cfg, 32).attention_flops_per_byte
  cost = costs["megabyte-p4-long"]
  steps = spec_lib.model_steps(study, long, cost, 1.2e8)
  assert steps == round(1.2e8 / (cost.train_flops_per_byte * 2 * 64))
  assert spec_lib.bytes_per_step(study, long) == 128
  lines = spec_lib.plan_lines(study, costs, study["budgets"])
  row = [line for line in lines if "megabyte-p4-long" in line]
  assert len(row) == 1 and "1.2e8" in row[0] and "64 x 2" in row[0] \
      and f"{steps:,}" in row[0]
  # Run-time estimates count the model's own bytes per step.
  done = [{"model": "megabyte-p4-long", "status": "done", "steps": 101, "batch_size": 2,
           "seq_len": 64, "bytes_per_s": 12800.0, "wall_s": 20.0, "budget_flops": 4e7,
           "train_flops_per_byte": cost.train_flops_per_byte}]
  assert runner.estimate_seconds("megabyte-p4-long", 201, study, cost, done, 128) \
      == pytest.approx(19 + 201 * 128 / 12800)
  assert runner.estimate_seconds("megabyte-p4-long", 201, study, cost, done, 64) \
      == pytest.approx(19 + 201 * 64 / 12800)


def test_auto_budgets_count_a_models_own_bytes_per_step():
  # At batch 8 (512 bytes per step, 4x the study's), 2x the finished budget fits 50 s and
  # 4x does not.
  study = _study()
  wide = {k: v for k, v in dict(study["models"][1], batch_size=8).items() if k != "budgets"}
  auto = _study(models=[wide], budgets=[1e10, "auto"], auto_multiples=(2, 4))
  costs = spec_lib.model_costs(auto)
  cost = costs[wide["name"]]
  done = [{"model": wide["name"], "status": "done", "steps": 101, "batch_size": 8,
           "seq_len": 64, "bytes_per_s": 12800.0, "wall_s": 20.0, "budget_flops": 1e10,
           "train_flops_per_byte": cost.train_flops_per_byte}]
  fixed = 20 - 100 * 512 / 12800
  for multiple in (2, 4):
    steps = spec_lib.model_steps(auto, wide, cost, multiple * 1e10)
    expected = fixed + steps * 512 / 12800
    assert runner.estimate_seconds(wide["name"], steps, auto, cost, done, 512) \
        == pytest.approx(expected)
    assert (expected <= 50) == (multiple == 2)
  assert runner.resolve_auto_budget(auto, costs, done, 50 / 0.85, [wide]) == 2e10


def test_model_budgets_choose_the_runs():
  study = _study()
  spec_lib.check_study(study)
  names = lambda models: [m["name"] for m in models]
  assert names(spec_lib.runs_at(study, 4e7)) == ["transformer"]
  assert names(spec_lib.runs_at(study, 1.2e8)) == ["megabyte-p4-long"]
  free = dict(study["models"][0])
  del free["budgets"]                  # a model without budgets runs at every one
  both = dict(study, models=[free, study["models"][1]], budgets=[4e7, 1.2e8, "auto"])
  spec_lib.check_study(both)
  assert names(spec_lib.runs_at(both, 1.2e8)) == ["transformer", "megabyte-p4-long"]
  assert names(spec_lib.runs_at(both, "auto")) == ["transformer"]
  # --budgets: the given budgets, each model at those of its own among them.
  one = spec_lib.select_runs(study, [1.2e8])
  assert one["budgets"] == [1.2e8] and names(one["models"]) == ["megabyte-p4-long"]
  spec_lib.check_study(one)
  assert study["budgets"] == [4e7, 1.2e8] and len(study["models"]) == 2   # unchanged
  # --models: the study's budgets where a chosen model runs.
  only = spec_lib.select_runs(study, models=["transformer"])
  assert only["budgets"] == [4e7] and names(only["models"]) == ["transformer"]
  assert spec_lib.select_runs(both, [4e7, "auto"], ["transformer"])["budgets"] == [4e7, "auto"]


@pytest.mark.parametrize("change, message", [
    ({"budgets": [4e7, 3e8]}, "model 'megabyte-p4-long': budget 1.2e8 is not one of the "
                              "study's budgets (4e7, 3e8)"),
    ({"budgets": [4e7, 1.2e8, "auto"]}, "an 'auto' budget needs a model without its own "
                                        "budgets"),
    ({"budgets": [4e7, 1.2e8, 5e8]}, "no model of the study runs at budget 5e8"),
])
def test_bad_model_budgets_are_one_line_errors(change, message):
  with pytest.raises(spec_lib.StudyError) as error:
    spec_lib.check_study(_study(**change))
  assert str(error.value) == message


@pytest.mark.parametrize("key, value, message", [
    ("budgets", 1e8, "model 'megabyte-p4-long': budgets must be a non-empty list"),
    ("budgets", [], "model 'megabyte-p4-long': budgets must be a non-empty list"),
    ("budgets", ["1.2e8"], "model 'megabyte-p4-long': budgets must be positive FLOP counts"),
    ("seq_len", 64.0, "model 'megabyte-p4-long': seq_len must be a positive integer"),
    ("batch_size", 0, "model 'megabyte-p4-long': batch_size must be a positive integer"),
])
def test_bad_model_settings_name_the_model(key, value, message):
  study = _study()
  study["models"][1][key] = value
  with pytest.raises(spec_lib.StudyError, match=message) as error:
    spec_lib.check_study(study)
  assert "\n" not in str(error.value)


def test_results_json_keeps_the_models_of_earlier_commands(tmp_path):
  # One budget per command into one folder: results.json lists every model run so far.
  study = _study()
  first = spec_lib.select_runs(study, [4e7])
  records_lib.write_results(str(tmp_path), first, {}, [])
  records_lib.write_results(str(tmp_path), spec_lib.select_runs(study, [1.2e8]), {}, [])
  saved = json.load(open(tmp_path / "results.json", encoding="utf-8"))
  assert [m["name"] for m in saved["models"]] == ["transformer", "megabyte-p4-long"]
  assert saved["study"]["budgets"] == [1.2e8]
  (tmp_path / "results.json").write_text("[1, 2")                  # a damaged one
  records_lib.write_results(str(tmp_path), first, {}, [])
  assert [m["name"] for m in json.load(open(tmp_path / "results.json"))["models"]] \
      == ["transformer"]


def test_selecting_a_budget_no_model_runs_at_is_an_error():
  with pytest.raises(spec_lib.StudyError) as error:
    spec_lib.select_runs(_study(), [5e8])
  assert str(error.value) == ("no model runs at budget 5e8; the models' own budgets are "
                              "4e7, 1.2e8")
  with pytest.raises(spec_lib.StudyError, match="no model of --models runs at budget 4e7"):
    spec_lib.select_runs(_study(), [4e7], ["megabyte-p4-long"])
  with pytest.raises(spec_lib.StudyError, match=r"unknown model\(s\) \['nope'\]"):
    spec_lib.select_runs(_study(), models=["nope"])


# ------------------------------------------------------------------ the scaling variant


def test_the_scaling_variant_sizes_models_per_budget():
  study = spec_lib.load_study("code_equal_compute:scaling")
  assert study["budgets"] == [2e15, 1e16, 1e17]
  costs = spec_lib.model_costs(study)
  runs = {b: spec_lib.runs_at(study, b) for b in study["budgets"]}
  assert [len(runs[b]) for b in study["budgets"]] == [5, 11, 3]
  for budget, models in runs.items():
    per_byte = {m["name"]: costs[m["name"]].train_flops_per_byte for m in models}
    assert max(per_byte.values()) / min(per_byte.values()) < 1.25, budget
    for model in models:
      assert "positions" not in model                  # the package's defaults
      trained = spec_lib.model_steps(study, model, costs[model["name"]], budget) \
          * spec_lib.bytes_per_step(study, model)
      assert 100e6 < trained < 600e6 and spec_lib.bytes_per_step(study, model) == 65536
      if model["kind"] == "megabyte":
        assert (model["local_heads"], model["local_head_dim"]) == (8, 64)
    by_series = {}
    for model in models:
      by_series.setdefault((model["series"], spec_lib.model_seq_len(study, model)),
                           []).append(model.get("learning_rate", study["train"]
                                                ["learning_rate"]))
    lr = study["train"]["learning_rate"]
    if budget == 1e16:           # the sweep: x0.5, x1, x2 for the transformer and P = 8
      for key in (("transformer", 2048), ("megabyte-p8", 2048), ("megabyte-p8", 8192)):
        assert sorted(by_series[key]) == pytest.approx([lr / 2, lr, 2 * lr]), key
    else:
      assert all(len(lrs) == 1 for lrs in by_series.values())
    # The 4x-context arm: MEGABYTE P = 8 at 8,192 x 8 beside the transformer at 2,048 x 32.
    long = [m for m in models if spec_lib.model_seq_len(study, m) == 8192]
    assert long and all(m["series"] == "megabyte-p8" and m["batch_size"] == 8 for m in long)
    assert ("transformer", 2048) in by_series
  with pytest.raises(ValueError, match="'h100', 'scaling' or 'cpu'"):
    code_equal_compute.get_study("tpu")


def test_the_scaling_plan_prints_one_budget_and_matches_the_docstring(capsys):
  study_cli.main(["--study=code_equal_compute:scaling", "--results=unused", "--plan"])
  plan = capsys.readouterr().out.splitlines()
  assert len(plan) == 2 + 19
  for line in plan[1:]:          # the table of the module docstring is this plan
    assert line in code_equal_compute.__doc__, line
  study_cli.main(["--study=code_equal_compute:scaling", "--results=unused", "--plan",
                  "--budgets=2e15"])
  rows = capsys.readouterr().out.splitlines()[2:]
  assert len(rows) == 5 and all(row.split()[0] == "2e15" for row in rows)
  with pytest.raises(SystemExit, match="^error: no model runs at budget 5e16; the models' "
                                       "own budgets are 2e15, 1e16, 1e17$"):
    study_cli.main(["--study=code_equal_compute:scaling", "--results=unused", "--plan",
                    "--budgets=5e16"])


# ------------------------------------------------------------------------ end to end


def test_a_study_with_model_contexts_and_budgets_end_to_end(packages_root, tmp_path):
  # Two transformers (they compile faster than MEGABYTE), one of them at its own context,
  # batch and budget: one series at two contexts.
  base = _study()
  short = dict(base["models"][0], series="transformer")
  long = dict(short, name="transformer-long", seq_len=64, batch_size=2, budgets=[1.2e8])
  study = _study(corpus=dict(base["corpus"], roots=packages_root), models=[short, long])
  results, work, corpora = (str(tmp_path / n) for n in ("results", "work", "corpus"))
  lines = []
  records = runner.run_study(study, results, work, corpora, log=lines.append)
  by_run = {r["run"]: r for r in records}
  assert sorted(by_run) == ["transformer-long@1.2e8", "transformer@4e7"]
  long, short = by_run["transformer-long@1.2e8"], by_run["transformer@4e7"]
  costs = spec_lib.model_costs(study)
  for record, seq_len, batch in ((long, 64, 2), (short, 32, 4)):
    cost = costs[record["model"]]
    assert (record["seq_len"], record["batch_size"]) == (seq_len, batch)
    assert record["steps"] == spec_lib.steps_for_budget(
        record["budget_flops"], cost.train_flops_per_byte, batch, seq_len) > 1
    assert record["bytes_trained"] == record["steps"] * batch * seq_len
    assert record["train_flops"] == pytest.approx(
        record["bytes_trained"] * cost.train_flops_per_byte)
    assert record["curve"][-1]["train_flops"] == pytest.approx(record["train_flops"])
    with open(os.path.join(record["workdir"], "config.json"), encoding="utf-8") as f:
      saved = json.load(f)
    assert (saved["model"]["seq_len"], saved["train"]["batch_size"]) == (seq_len, batch)
  assert costs["transformer-long"].train_flops_per_byte \
      > costs["transformer"].train_flops_per_byte            # attention over 64 bytes
  assert long["series"] == short["series"] == "transformer"
  assert long["learning_rate"] == short["learning_rate"] == 3e-3
  # Every held-out byte is scored whatever the context, each file from an empty context.
  assert long["eval_bytes"] == short["eval_bytes"] > 0
  manifest = json.load(open(os.path.join(results, "results.json")))["corpora"]["main"]
  share = manifest["eval"]["share_past"]
  assert set(share) == {"32", "64"} and 0 < share["64"] < share["32"] < 1
  assert any("of them past the first 32 bytes of their file: " in line and ", past 64: "
             in line for line in lines)
  # A learning-rate variant of the long model (its record as a sweep would write it) is
  # drawn as a faint point, and the tables give the best of the two.
  records_lib.save_run(results, dict(long, run="transformer-long-lr2x@1.2e8",
                                     model="transformer-long-lr2x", learning_rate=6e-3,
                                     eval_bpb=long["eval_bpb"] + 0.5))
  paths = plot_results.plot_directory(results)
  assert {os.path.basename(p) for p in paths} >= {"bpb_vs_flops.png", "throughput.png",
                                                  "table.md"}
  table = open(os.path.join(results, "table.md"), encoding="utf-8").read()
  assert "| context x batch | peak LR |" in table and "| 64 x 2 | 0.006 |" in table
  assert (f"| 1.2e8 | transformer (64) | transformer-long | 0.003 | 2 | "
          f"**{long['eval_bpb']:.4f}** |") in table
  lines_drawn = plot_results.by_model(plot_results.collect([results]))
  assert list(lines_drawn) == ["transformer (32)", "transformer (64)"]
  assert [r["model"] for r in lines_drawn["transformer (64)"]] == ["transformer-long"]


def test_series_labels_and_best_runs():
  def record(model, budget, bpb, seq_len=2048, series=None, lr=1e-3):
    return {"model": model, "run": f"{model}@{budget}", "kind": "megabyte", "patch_size": 8,
            "budget_flops": budget, "eval_bpb": bpb, "seq_len": seq_len, "batch_size": 32,
            "series": series, "learning_rate": lr, "params": 1e6,
            "train_flops_per_byte": 1e6, "steps": 1, "bytes_trained": 1}
  assert [records_lib.context_tag(n) for n in (8192, 2048, 1536, 256, 3000)] \
      == ["8k", "2k", "1.5k", "256", "3000"]
  old = [record("a", 1e9, 2.0), record("a", 2e9, 1.5)]       # records without a series
  assert records_lib.series_labels(old) == {("a", 2048): "a"}
  assert records_lib.best_table(old) == ""
  sweep = [record("p8-m", 1e9, 2.0, series="p8"), record("p8-m-lr2x", 1e9, 1.9, series="p8",
                                                          lr=2e-3),
           record("p8-8k", 1e9, 1.8, seq_len=8192, series="p8"),
           record("p8-l", 2e9, 1.6, series="p8")]
  labels = records_lib.series_labels(sweep)
  assert labels == {("p8", 2048): "p8 (2k)", ("p8", 8192): "p8 (8k)"}
  best = records_lib.best_runs(sweep)
  assert [r["model"] for r in best[("p8", 2048)]] == ["p8-m-lr2x", "p8-l"]
  table = records_lib.markdown_table(sweep)
  assert "| 1e9 | p8 (2k) | p8-m-lr2x | 0.002 | 2 | **1.9000** |" in table
  assert "| 2e9 | p8 (2k) | p8-l | 0.001 | 1 | **1.6000** |" in table
  # Relabelled models (`--models=NAME=LABEL`) take the label as their series too.
  assert plot_results.select_models(old, "a=base")[0]["series"] == "base"
  assert plot_results.select_models(sweep, "p8-m=x")[0]["series"] == "p8"
