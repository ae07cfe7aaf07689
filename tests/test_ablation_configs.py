"""The variants-ablation configs (experiments/configs/ablation/): a valid study for the
study driver, four buildable models whose training FLOPs per byte `flops` counts, and one
training config per model with steps matched to the budget."""

import importlib.util
import os

import pytest

from conftest import REPO
from megabyte_jax.flops import model_cost
from megabyte_jax.models import build_model

ABLATION = os.path.join(REPO, "experiments", "configs", "ablation")


def _load(name):
  spec = importlib.util.spec_from_file_location(f"_ablation_{name}",
                                                os.path.join(ABLATION, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("variant", ["h100", "cpu"])
def test_study_has_the_four_models_at_similar_cost(variant):
  study = _load("study").get_study(variant)
  for key in ("name", "corpus", "seq_len", "batch_size", "budgets", "models"):
    assert key in study
  assert study["corpus"]["kind"] == "packages"
  names = [m["name"] for m in study["models"]]
  assert names == ["base", "conv", "cross_patch", "three_level"]
  costs = {}
  for model in study["models"]:
    config = _load(model["name"]).get_config(variant)
    _, cfg = build_model(config.model)
    costs[model["name"]] = model_cost(cfg, study["seq_len"]).train_flops_per_byte
    assert cfg.seq_len == study["seq_len"] and config.train.batch_size == study["batch_size"]
  assert max(costs.values()) / min(costs.values()) < 1.1
  by_name = {m["name"]: m for m in study["models"]}
  assert by_name["conv"]["conv_kernel_sizes"] == (3, 5, 7)
  assert by_name["cross_patch"]["cross_patch"] == 4
  assert len(by_name["three_level"]["patch_sizes"]) == 2


def test_training_configs_match_the_budget():
  study = _load("study")
  for name in study.NAMES:
    config = _load(name).get_config()
    _, cfg = build_model(config.model)
    flops = (model_cost(cfg).train_flops_per_byte * config.train.steps
             * config.train.batch_size * cfg.seq_len)
    assert abs(flops / 5e14 - 1) < 0.01, name
    assert config.model.dtype == "bfloat16" and config.train.b2 == 0.95
  assert study.train_config("conv", "cpu", budget=2e11).train.steps > 1
  with pytest.raises(ValueError, match="model must be one of"):
    study.train_config("nope")
  with pytest.raises(ValueError, match="variant must be"):
    study.get_study("tpu")
  with pytest.raises(ValueError, match="variant must be one of"):
    study.models("tpu")
