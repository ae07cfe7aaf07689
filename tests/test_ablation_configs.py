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


def test_paper_recipe_config_is_the_default_model_with_the_papers_recipe():
  path = os.path.join(REPO, "experiments", "configs")
  spec = importlib.util.spec_from_file_location("_paper_recipe",
                                                os.path.join(path, "paper_recipe.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  spec = importlib.util.spec_from_file_location("_default", os.path.join(path, "default.py"))
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)
  ours = default.get_config()
  _, cfg = build_model(config.model)
  assert (cfg.activation, cfg.init_std, cfg.dropout, cfg.embed_dropout, cfg.tie_embeddings) \
      == ("relu", 0.006, 0.1, 0.0, True)
  assert cfg.dtype == "float32"
  assert (config.train.b2, config.train.weight_decay, config.train.grad_clip,
          config.train.warmup_steps, config.train.min_lr_ratio) == (0.98, 0.1, 1.0, 500, 0.0)
  for field in ("seq_len", "patch_size", "global_dim", "local_dim", "global_layers"):
    assert config.model[field] == ours.model[field]
  assert config.train.steps == ours.train.steps
  assert model_cost(cfg).params < model_cost(build_model(ours.model)[1]).params   # tied head


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")   # ml_collections'
def test_model_configs_load_through_config_flags_and_import_the_study_as_a_module():
  # `--config=experiments/configs/ablation/NAME.py` as megabyte_jax.train reads it (absl's
  # config_flags, by path); the file imports `experiments.configs.ablation.study`, found on
  # the Python path (the repository root, as `python -m` from it gives).
  from absl import flags
  from ml_collections import config_flags
  from experiments.configs.ablation import study
  for name in study.NAMES:
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values)
    values(["prog", f"--config={os.path.join(ABLATION, name)}.py:cpu"])
    assert values.config.to_dict() == study.train_config(name, "cpu").to_dict(), name
