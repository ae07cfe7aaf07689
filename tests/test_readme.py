"""The README's Python snippets run as written, in order, in one namespace (a tiny trained
run stands in for `runs/default`)."""

import os
import re
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_snippets() -> list[str]:
  """Every ```python block of README.md, in order."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_snippets():
  snippets = python_snippets()
  assert len(snippets) >= 4
  assert any("generate(" in s for s in snippets) and any("load_trained" in s for s in snippets)


def test_readme_python_snippets_run(tmp_path, monkeypatch, corpus):
  from megabyte_jax.configs.tiny import get_config
  from megabyte_jax.train import train_and_evaluate
  config = get_config()
  config.data.files = corpus
  config.train.steps, config.train.warmup_steps = 2, 1
  config.train.final_eval, config.sample.num_bytes = False, 0
  monkeypatch.chdir(tmp_path)
  train_and_evaluate(config, "runs/default")
  namespace = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for i, snippet in enumerate(python_snippets()):
      try:
        exec(compile(snippet, f"README.md python snippet {i}", "exec"), namespace)  # pylint: disable=exec-used
      except Exception as e:  # pylint: disable=broad-except
        pytest.fail(f"README snippet {i} failed: {type(e).__name__}: {e}\n{snippet}")
  assert not [w for w in caught if "LoadedModel" in str(w.message)]   # no deprecated use
  assert namespace["out"].shape == (1, 4 + 32)
  assert os.path.exists("default.msgpack")


def _read(name: str) -> str:
  with open(os.path.join(REPO, name), encoding="utf-8") as f:
    return f.read()


def test_readme_speaks_to_users():
  """The README keeps its quickstart promise, lists every extra, opens Colab with an
  absolute link, gives the headless notebook command, jits the model's init, and carries
  no notes about how the project is run; ARCHITECTURE.md neither."""
  import tomllib
  text = _read("README.md")
  assert "make train" in text and "make test" in text
  assert len(text.splitlines()) < 320   # details live in RESULTS.md and BENCHMARKS.md
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  for extra in extras:
    assert f"[{extra}]" in text, extra
  badge = re.search(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)", text)
  assert badge and badge.group(1).startswith("https://colab.research.google.com/")
  assert "jupyter execute experiments/colab.ipynb" in text and '".[experiments]"' in text
  assert any("jax.jit(model.init)" in s for s in python_snippets())
  for name in ("README.md", "ARCHITECTURE.md"):
    for leak in (r"\bissues? \d+", r"\bsessions?\b", r"device time", r"code study"):
      assert not re.search(leak, _read(name), flags=re.I), (name, leak)
