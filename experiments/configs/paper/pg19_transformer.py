"""The 350M byte-level Transformer of the PG-19 comparison (Yu et al., 2023: Table 9).

    python -m megabyte_jax.train --config=experiments/configs/paper/pg19_transformer.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/pg19_transformer.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 9: Transformer 350M, context 1,024; 1.064 bits per byte on PG-19, against 0.991 for
  MEGABYTE 1.3B/218M (`pg19_megabyte.py`) at equal training compute.
- Table 14: the 350M shape is 24 layers of width 1024, 16 heads of 64.
- Batch 72 and learning rate 2e-4: Table 15's text row for the Transformer.
- Steps: 80B bytes (Section 4), 80e9 / (72 * 1024) (derived).
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
Training FLOPs per byte (`megabyte_jax.flops`): 2.12G, equal to `pg19_megabyte.py`'s.

`:small` is a one-GPU twin (not from the paper): width 320 x 6, context 1,024, batch 128,
learning rate 1e-3, 20,000 steps.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe, steps_for_bytes


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config("transformer", seq_len=1024, dim=1024, layers=24, heads=16,
                         head_dim=64)
    paper_recipe(config)
    config.train.batch_size = 72
    config.train.learning_rate = 2e-4
    config.train.steps = steps_for_bytes(80e9, 72, 1024)
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config("transformer", seq_len=1024, dim=320, layers=6, heads=5)
    paper_recipe(config)
    config.train.batch_size = 128
    config.train.learning_rate = 1e-3
    config.train.steps = 20000
  else:
    raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
  config.eval.batch_size = config.train.batch_size
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.data.name = "pg19"
  config.data.feature = "book_text"
  config.sample.prompt = "The "
  return config
