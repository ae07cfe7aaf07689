"""What a new user meets first: `--help` of every command, `--print_config` and
`--help_config`, config names that do not exist, and features whose extra is missing.

The commands run as their console scripts do (`megabyte-train` calls
`megabyte_jax.train.run()` with another `__main__`), several in one process
(`tests/helpers/commands.py`) to save a JAX import per command."""

import json
import os

import pytest

from conftest import REPO, run_commands
from megabyte_jax import config_fields, configs
from megabyte_jax.configs import default, tiny, transformer
from megabyte_jax.errors import ConfigError
from megabyte_jax.experiment import base_config, clip_warmup

def _one_line_error(result, *parts):
  assert result["code"] == 1, result
  lines = result["stderr"].strip().splitlines()
  assert "Traceback" not in result["stderr"] and len(lines) == 1, result["stderr"]
  assert lines[0].startswith("error: ")
  for part in parts:
    assert part in lines[0], (part, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """One process running the help, config and discovery commands (see each test)."""
  tmp = tmp_path_factory.mktemp("help")
  never = str(tmp / "never")
  return never, run_commands(
      ("megabyte_jax.train", ["--help"]),
      ("megabyte_jax.train", ["--config=tiny", "--help"]),
      ("megabyte_jax.evaluate", ["--help"]),
      ("megabyte_jax.sample", ["-h"]),
      ("megabyte_jax.plot", ["--helpshort"]),
      ("megabyte_jax.train", ["--config=tiny", "--print_config", "--config.train.steps=2",
                              f"--workdir={never}"]),
      ("megabyte_jax.train", ["--config=tiny", "--help_config", "--config.train.steps=7"]),
      ("megabyte_jax.train", ["--config=tinyy", f"--workdir={never}"]),
      ("megabyte_jax.train", ["--config=megabyte_jax:defualt", f"--workdir={never}"]),
      ("megabyte_jax.train", ["--print_config"]),
      ("megabyte_jax.train", ["--help", "--config.train.steps=2"]),
      ("megabyte_jax.train", ["--config=experiments/configs/refrence.py", f"--workdir={never}"]),
  )


def test_help_of_every_command_shows_its_guide_and_flags(outputs):
  _, out = outputs
  train, train_tiny, evaluate, sample, plot = out[:5]
  for result, prog, flag in ((train, "megabyte-train", "--allow_data_change"),
                             (evaluate, "megabyte-evaluate", "--stride"),
                             (sample, "megabyte-sample", "--prompt_file"),
                             (plot, "megabyte-plot", "--labels")):
    assert result["code"] == 0 and result["stderr"] == "", result
    text = result["stdout"]
    assert text.startswith(f"usage: {prog} ") and flag in text and "--workdir" in text
    assert "Try --helpfull" not in text and "--helpfull lists every flag" in text
    assert "jax_" not in text and "--verbosity" not in text   # absl's and JAX's: --helpfull
  text = train["stdout"]
  for promise in ("--print_config", "--help_config", "--config.train.steps=100", "tiny",
                  "megabyte-plot --workdir=DIR", "config_history.jsonl"):
    assert promise in text, promise
  assert "when train.tensorboard is on" in " ".join(text.split())
  assert "tensorboard --logdir=DIR/tb" in " ".join(text.split())
  tiny_text = " ".join(train_tiny["stdout"].split())
  assert "This config writes no TensorBoard events (train.tensorboard=False" in tiny_text
  assert "TensorBoard events in tb/" not in tiny_text   # tiny turns it off: no promise
  assert out[10]["code"] == 0 and out[10]["stdout"].startswith("usage: megabyte-train")


def test_print_config_prints_the_resolved_config_and_writes_nothing(outputs):
  never, out = outputs
  result = out[5]
  assert result["code"] == 0
  printed = json.loads(result["stdout"])
  assert printed["train"]["steps"] == 2 and printed["train"]["warmup_steps"] == 1
  assert printed["model"]["seq_len"] == tiny.get_config().model.seq_len
  assert result["stderr"].strip() == ("note: train.warmup_steps=5 is not shorter than "
                                      "train.steps=2: warming up over 1 step instead")
  assert not os.path.exists(never)
  _one_line_error(out[9], "--print_config needs a config")


def test_help_config_lists_every_field_with_value_and_meaning(outputs):
  result = outputs[1][6]
  assert result["code"] == 0
  lines = result["stdout"].splitlines()
  at = lines.index("--config.train.steps=7")
  assert lines[at + 1].strip().startswith("optimizer updates in the whole run")
  assert "--config.model.patch_size=8" in lines
  assert sum(l.startswith("--config.") for l in lines) == len(
      config_fields.describe(tiny.get_config()))


def test_unknown_configs_name_the_packaged_ones_and_the_nearest_match(outputs):
  _, out = outputs
  _one_line_error(out[7], "no config file or packaged config 'tinyy'",
                  "did you mean --config=tiny?", "default, tiny, transformer")
  _one_line_error(out[8], "no packaged config 'defualt'", "did you mean --config=default?")
  _one_line_error(out[11], "did you mean --config=experiments/configs/reference.py?")


def test_unknown_config_in_python(tmp_path):
  with pytest.raises(ConfigError, match=r"'reference' is not installed with the package: it "
                                        r"is experiments/configs/reference\.py in a checkout"):
    raise configs.unknown_config(str(tmp_path / "reference"))
  (tmp_path / "mine.py").write_text("")
  with pytest.raises(ConfigError, match=r"did you mean --config=.*mine\.py\?"):
    configs.resolve(str(tmp_path / "mien.py"))
  with pytest.raises(ConfigError, match="did you mean --config=transformer"):
    configs.resolve("megabyte_jax:transfomer")
  assert configs.resolve("gs://bucket/run/config.json") == "gs://bucket/run/config.json"
  for name in configs.CHECKOUT_ONLY:   # the names the message points to a checkout for
    assert os.path.exists(os.path.join(REPO, configs.CHECKOUT_DIR, f"{name}.py")), name


def test_missing_extras_are_one_line_naming_the_extra(tmp_path):
  """With TFDS, Pillow and matplotlib unimportable (a core install): a TFDS source, a PNG
  sample and a plot each end in one line naming the extra that provides them."""
  run = tmp_path / "run"
  run.mkdir()
  config = tiny.get_config()
  (run / "config.json").write_text(json.dumps(config.to_dict()))
  (run / "metrics.jsonl").write_text('{"step": 5, "train_bpb": 7.5}\n')
  out = run_commands(
      ("megabyte_jax.train", ["--config=tiny", f"--workdir={tmp_path}/new",
                              "--config.data.name=byte_files", "--noprogress"]),
      ("megabyte_jax.sample", [f"--workdir={run}", f"--output={tmp_path}/x.png"]),
      ("megabyte_jax.plot", [f"--workdir={run}", f"--output={tmp_path}/bpb.png"]),
      block="tensorflow_datasets,PIL,matplotlib")
  _one_line_error(out[0], "data.name=byte_files needs the [tfds] extra "
                          "(tensorflow_datasets is not installed): "
                          "pip install 'megabyte-jax[tfds]'")
  _one_line_error(out[1], "PNG output (--output=*.png) needs the [tfds] extra (PIL")
  _one_line_error(out[2], "megabyte-plot needs the [plot] extra (matplotlib is not "
                          "installed): pip install 'megabyte-jax[plot]'")
  assert not os.path.exists(tmp_path / "new" / "config.json")


def test_clip_warmup_shortens_only_a_warmup_as_long_as_the_run():
  config = tiny.get_config()
  assert clip_warmup(config) is None and config.train.warmup_steps == 5
  config.train.steps = 5
  assert "warming up over 4 steps instead" in clip_warmup(config)
  assert config.train.warmup_steps == 4
  config.train.update(steps=1, warmup_steps=3)
  assert "over 0 steps" in clip_warmup(config) and config.train.warmup_steps == 0
  config.train.update(steps=0, warmup_steps=3)   # left to the checks, which name it
  assert clip_warmup(config) is None and config.train.warmup_steps == 3


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_every_config_field_has_a_meaning(kind):
  fields = (dict(seq_len=64, patch_size=8, global_dim=64, global_layers=1, global_heads=2,
                 local_dim=32, local_layers=1, local_heads=2) if kind == "megabyte"
            else dict(seq_len=64, dim=32, layers=1, heads=2))
  rows = config_fields.describe(base_config(kind, **fields))
  assert [name for name, _, meaning in rows if not meaning] == []
  names = {name for name, _, _ in rows}
  assert set(config_fields.FIELD_HELP) <= names   # no meaning of a field that is gone
  for packaged in (default, tiny, transformer):
    assert all(m for _, _, m in config_fields.describe(packaged.get_config()))
