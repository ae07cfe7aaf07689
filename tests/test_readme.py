"""The README's Python snippets run as written, in order, in one namespace (a tiny trained
run stands in for `runs/default`)."""

import os
import re

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
  for i, snippet in enumerate(python_snippets()):
    try:
      exec(compile(snippet, f"README.md python snippet {i}", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"README snippet {i} failed: {type(e).__name__}: {e}\n{snippet}")
  assert namespace["out"].shape == (1, 4 + 32)
  assert os.path.exists("default.msgpack")
