"""The `cross_patch` model of the variants ablation, as a training config on its own (the models,
corpus and budgets are described in `experiments/configs/ablation/study.py`).

    python -m megabyte_jax.train --config=experiments/configs/ablation/cross_patch.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/ablation/cross_patch.py:cpu --workdir=W

Steps give 5e14 training FLOPs (`:cpu`: the tiny shape, 2e11); data default to the stdlib's
sources (the study driver trains every model on its code corpus instead). Run from the
repository root: this file imports `experiments.configs.ablation.study`.
"""

from experiments.configs.ablation import study


def get_config(variant: str = "h100"):
  """Returns the experiment ConfigDict (`variant`: "h100" or "cpu")."""
  return study.train_config("cross_patch", variant)
