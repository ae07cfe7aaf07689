"""Config validation and the experiment config system."""

import os

import pytest

from megabyte_jax import ConfigError, MegabyteConfig, TransformerConfig
from megabyte_jax.experiment import base_config, model_section
from megabyte_jax.models import build_model
from megabyte_jax.training.workdir import load_config, resolve_config, save_config

from conftest import REPO

BASE = dict(seq_len=64, patch_size=8, global_dim=64, global_layers=2, global_heads=4,
            local_dim=32, local_layers=2, local_heads=2)


@pytest.mark.parametrize("changes, message", [
    ({"seq_len": 60}, "seq_len=60 must be a multiple of patch_size=8"),
    ({"global_dim": 60}, "global_dim=60 must be a multiple of patch_size=8"),
    ({"global_heads": 3}, "global_dim=64 must be a multiple of global_heads=3"),
    ({"local_heads": 5}, "local_dim=32 must be a multiple of local_heads=5"),
    ({"patch_size": 0}, "patch_size must be a positive integer"),
    ({"local_layers": -1}, "local_layers must be a positive integer"),
    ({"seq_len": 64.0}, "seq_len must be a positive integer"),
    ({"vocab_size": 512}, "vocab_size must be 256"),
    ({"activation": "tanh"}, "activation must be one of"),
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"dtype": "float64"}, "dtype must be one of ['bfloat16', 'float16', 'float32'], got 'float64'"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"init_std": -0.1}, "init_std must be None or a positive number"),
    ({"attention_impl": "flash"}, "attention_impl must be one of"),
])
def test_megabyte_config_validation(changes, message):
  with pytest.raises(ConfigError) as err:
    MegabyteConfig(**{**BASE, **changes})
  assert message in str(err.value)


def test_config_errors_are_value_errors():
  with pytest.raises(ValueError):
    MegabyteConfig(**{**BASE, "patch_size": 7})


def test_transformer_config_validation():
  TransformerConfig(seq_len=64, dim=32, layers=2, heads=4)
  with pytest.raises(ConfigError, match="dim=30 must be a multiple of heads=4"):
    TransformerConfig(seq_len=64, dim=30, layers=2, heads=4)
  TransformerConfig(seq_len=64, dim=30, layers=2, heads=4, head_dim=8)  # explicit head width


def test_config_round_trips_through_dict():
  cfg = MegabyteConfig(**BASE, activation="swiglu")
  assert MegabyteConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ConfigError, match=r"unknown MegabyteConfig field\(s\) \['layers'\]"):
    MegabyteConfig.from_dict({**BASE, "layers": 3})


def test_derived_sizes():
  cfg = MegabyteConfig(**BASE)
  assert cfg.num_patches == 8
  assert cfg.byte_global_dim == 8
  assert cfg.global_attention_head_dim == 16
  assert cfg.local_attention_head_dim == 16


def test_model_section_holds_every_field_and_builds():
  section = model_section("megabyte", **BASE)
  assert set(section.keys()) == {"kind"} | set(MegabyteConfig(**BASE).to_dict())
  section.init_std = 0.006   # placeholders accept command-line style overrides
  model, cfg = build_model(section)
  assert cfg.init_std == 0.006 and type(model).__name__ == "Megabyte"
  model, cfg = build_model(model_section("transformer", seq_len=64, dim=32, layers=1, heads=2))
  assert isinstance(cfg, TransformerConfig)


def test_model_section_errors():
  with pytest.raises(ConfigError, match="needs the field 'patch_size'"):
    model_section("megabyte", seq_len=64)
  with pytest.raises(ConfigError, match="unknown MegabyteConfig field"):
    model_section("megabyte", **BASE, depth=3)
  with pytest.raises(ConfigError, match="model kind must be one of"):
    model_section("lstm", **BASE)
  section = model_section("megabyte", **BASE)
  section.kind = "lstm"
  with pytest.raises(ConfigError, match="model.kind must be one of"):
    build_model(section)


@pytest.mark.parametrize("name", ["default", "tiny", "transformer", "reference", "long_64k", "long_1m"])
def test_shipped_configs_build(name):
  import importlib.util
  path = os.path.join(REPO, "experiments", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  _, model_cfg = build_model(config.model)
  assert config.data.files == "stdlib"
  if name == "reference":   # the shared benchmark shape (BENCHMARKS.md)
    from megabyte_jax.config import PAPER_FORMULATION
    from megabyte_jax.flops import model_cost
    assert (model_cfg.seq_len, model_cfg.patch_size, model_cfg.global_dim,
            model_cfg.local_dim, model_cfg.global_layers, model_cfg.local_layers) == (
                8192, 8, 1024, 512, 12, 6)
    assert round(model_cost(model_cfg).params / 1e6, 1) == 153.5   # rotary: no tables
    assert round(model_cost(model_cfg.replace(positions="learned")).params / 1e6, 1) == 157.7
    paper = model_cfg.replace(**PAPER_FORMULATION)                      # the figures before
    assert round(model_cost(paper).params / 1e6, 1) == 146.2
    assert (model_cfg.norm, model_cfg.use_bias) == ("rmsnorm", False)   # as the peer's


def test_workdir_config_round_trip_and_model_guard(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match="not a training directory"):
    load_config(workdir)
  with pytest.raises(ConfigError, match="not a training directory"):
    resolve_config(workdir, None)
  config = base_config("megabyte", **BASE)
  save_config(workdir, config)
  assert load_config(workdir).to_dict() == config.to_dict()
  assert resolve_config(workdir, None).to_dict() == config.to_dict()
  longer = base_config("megabyte", **BASE)
  longer.train.steps = 5000          # non-model changes are fine (extend a run)
  assert resolve_config(workdir, longer).train.steps == 5000
  wider = base_config("megabyte", **{**BASE, "local_dim": 64})
  with pytest.raises(ConfigError, match=r"model.local_dim: 32 -> 64"):
    resolve_config(workdir, wider)


def test_corrupt_saved_config_is_reported(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="cannot read"):
    load_config(str(tmp_path))


def test_load_module_file_reaches_a_file_beside_the_caller(tmp_path):
  """`load_module_file(path)` and `load_module_file(__file__, "sibling.py")` load a file by
  its path from any working directory; a missing file is named in the error."""
  from megabyte_jax.experiment import load_module_file
  (tmp_path / "sub").mkdir()
  (tmp_path / "study.py").write_text("VALUE = 7\n")
  (tmp_path / "sub" / "config.py").write_text(
      "from megabyte_jax.experiment import load_module_file\n"
      "def get():\n"
      "  return load_module_file(__file__, '..', 'study.py').VALUE\n")
  config = load_module_file(str(tmp_path / "sub" / "config.py"))
  assert config.get() == 7
  assert load_module_file(str(tmp_path / "sub" / "config.py"), os.pardir, "study.py").VALUE == 7
  with pytest.raises(FileNotFoundError, match="missing.py"):
    load_module_file(str(tmp_path / "study.py"), "missing.py")
