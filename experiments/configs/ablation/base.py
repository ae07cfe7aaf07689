"""The `base` model of the variants ablation, as a training config on its own (the models,
corpus and budgets are described in `experiments/configs/ablation/study.py`).

    python -m megabyte_jax.train --config=experiments/configs/ablation/base.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/ablation/base.py:cpu --workdir=W

Steps give 5e14 training FLOPs (`:cpu`: the tiny shape, 2e11); data default to the stdlib's
sources (the study driver trains every model on its code corpus instead).
"""

import importlib.util
import os


def _study():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study.py")
  spec = importlib.util.spec_from_file_location("_ablation_study", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = "h100"):
  """Returns the experiment ConfigDict (`variant`: "h100" or "cpu")."""
  return _study().train_config("base", variant, 5e14 if variant == "h100" else 2e11)
