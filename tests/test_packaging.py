"""Packaging (issue 22): metadata, extras, packaged configs, importable CLIs, an import of the
package without the optional extras."""

import os
import subprocess
import sys
import tomllib

import pytest

from megabyte_jax import configs
from megabyte_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_license_citation_changelog_version_and_metadata():
  import megabyte_jax
  with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
    assert "Apache License" in f.read(300)
  with open(os.path.join(REPO, "CITATION.cff"), encoding="utf-8") as f:
    citation = f.read()
  assert "2305.07185" in citation and "Zettlemoyer" in citation and "cff-version" in citation
  assert os.path.exists(os.path.join(REPO, "CHANGELOG.md"))
  assert os.path.exists(os.path.join(REPO, "megabyte_jax", "py.typed"))
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  assert megabyte_jax.__version__ and project["license"]["text"] == "Apache-2.0"
  assert project["authors"] and project["classifiers"] and project["urls"]
  extras = project["optional-dependencies"]
  assert {"tfds", "experiments", "dev", "cuda12", "tpu", "plot", "tensorboard",
          "gcs"} <= set(extras)
  core = " ".join(project["dependencies"])
  for heavy in ("tensorflow-datasets", "pytest", "matplotlib", "ipykernel", "hypothesis",
                "nbclient", "pillow", "tensorboardX"):
    assert heavy not in core, heavy
  assert any(d.startswith("jax[cuda12]") for d in extras["cuda12"])
  assert any(d.startswith("jax[tpu]") for d in extras["tpu"])


def test_requirements_txt_lists_the_core_and_the_extras_of_a_checkout():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
    pins = {line.strip() for line in f if line.strip() and not line.startswith("#")}
  wanted = set(project["dependencies"])
  for extra in ("tfds", "experiments", "dev"):
    wanted |= set(project["optional-dependencies"][extra])
  assert wanted == pins
  with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
    assert "dev,tfds,experiments" in f.read()


def test_console_scripts_name_callable_entry_points():
  import importlib
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert set(scripts) == {"megabyte-train", "megabyte-evaluate", "megabyte-sample",
                          "megabyte-plot"}
  for target in scripts.values():
    module, name = target.split(":")
    assert callable(getattr(importlib.import_module(module), name))


def test_import_works_without_the_optional_extras():
  """`import megabyte_jax` (and the CLIs and the data package) with tensorflow_datasets,
  tensorboardX, PIL and matplotlib made unimportable."""
  proc = _python(
      "import sys\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] in ('tensorflow_datasets', 'tensorboardX', 'PIL', "
      "'matplotlib', 'tensorflow'):\n"
      "      raise ImportError('blocked: ' + name)\n"
      "sys.meta_path.insert(0, Block())\n"
      "import megabyte_jax, megabyte_jax.train, megabyte_jax.evaluate, megabyte_jax.sample\n"
      "import megabyte_jax.plot\n"
      "import megabyte_jax.data, megabyte_jax.export\n"
      "from megabyte_jax.training.metrics import MetricWriter\n"
      "import tempfile\n"
      "w = MetricWriter(tempfile.mkdtemp(), tensorboard=True); w.write(1, {'x': 1.0}); "
      "w.close()\n"
      "assert 'tensorflow_datasets' not in sys.modules\n"
      "print('ok', megabyte_jax.__version__)\n")
  assert proc.returncode == 0, proc.stderr
  assert "ok" in proc.stdout and "tensorboardX is not installed" in proc.stderr


def test_importing_the_clis_defines_no_flags():
  proc = _python(
      "import megabyte_jax.train, megabyte_jax.evaluate, megabyte_jax.sample\n"
      "from absl import flags\n"
      "flags.DEFINE_string('config', None, 'mine'); flags.DEFINE_string('workdir', None, 'x')\n"
      "flags.DEFINE_integer('step', 0, 'x'); flags.DEFINE_bool('progress', True, 'x')\n"
      "flags.FLAGS(['prog', '--config=a', '--workdir=b'])\n"
      "print(flags.FLAGS.config, flags.FLAGS.workdir)\n")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["a", "b"]


def test_packaged_configs_resolve_by_name_and_are_the_one_source():
  assert configs.resolve("tiny") == configs.config_file("tiny")
  assert configs.resolve("megabyte_jax:default") == configs.config_file("default")
  assert configs.resolve("megabyte_jax:transformer:x") == configs.config_file("transformer") + ":x"
  assert configs.resolve("experiments/configs/reference.py") == "experiments/configs/reference.py"
  with pytest.raises(ConfigError, match="no packaged config"):
    configs.resolve("megabyte_jax:nope")
  assert configs.resolve_argv(["p", "--config", "tiny", "--workdir=x"])[2] == \
      configs.config_file("tiny")
  assert configs.resolve_argv(["p", "--config=tiny:a"])[1] == \
      "--config=" + configs.config_file("tiny") + ":a"
  import importlib
  for name in configs.PACKAGED:
    packaged = importlib.import_module(f"megabyte_jax.configs.{name}")
    shim_path = os.path.join(REPO, "experiments", "configs", f"{name}.py")
    with open(shim_path, encoding="utf-8") as f:
      assert f"from megabyte_jax.configs.{name} import get_config" in f.read()
    assert packaged.get_config().to_dict()


def test_flag_value_finds_both_spellings():
  assert configs.flag_value(["p", "--workdir=a", "--workdir", "b"], "workdir") == (2, "b")
  assert configs.flag_value(["p", "--x=1"], "workdir") == (None, None)
