"""The quickstart model (`default.py`) trained with the paper's recipe instead of ours.

    python -m megabyte_jax.train --config=experiments/configs/paper_recipe.py --workdir=runs/paper
    make train CONFIG=experiments/configs/paper_recipe.py WORKDIR=runs/paper

Same model shape, data, batch, steps and peak learning rate as `default.py`; everything
Appendix A.1 of the paper specifies comes from `megabyte_jax.recipes.paper_recipe`: Adam
beta1 0.9 / beta2 0.98, weight decay 0.1, gradient clipping 1.0, 500 warmup updates and decay
to 0, ReLU, dropout 0.1 everywhere except on the embeddings, truncated-normal init with std
0.006, the output projection by the local byte embedding (`tie_embeddings`). One exception:
compute stays float32 (the recipe's bf16 mixed precision is a speed choice, and slow on a
CPU); pass `--config.model.dtype=bfloat16` on a GPU to have it as written.

Our defaults differ (GELU, no dropout, scaled fan-in init, a separate output projection,
beta2 0.95, 100 warmup steps, cosine decay to 10%); running both configs compares the two
recipes on the same model and bytes. The paper's own model sizes are in
`experiments/configs/paper/`. (`default.py` re-exports `megabyte_jax.configs.default`, which
this file imports, so it works from any directory.)
"""

from megabyte_jax.configs import default
from megabyte_jax.recipes import paper_recipe


def get_config():
  """Returns the experiment ConfigDict."""
  config = paper_recipe(default.get_config())
  config.model.dtype = "float32"
  return config
