"""MEGABYTE 1.3B global + 218M local on PG-19 (Yu et al., 2023: Tables 9 and 13).

    python -m megabyte_jax.train --config=experiments/configs/paper/pg19_megabyte.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/pg19_megabyte.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 9 (generation speed at equal training compute) and Table 13 (global/local split):
  global 1.3B, local 218M, context 8,192, patch size 8; 0.991 bits per byte on PG-19.
- Table 14: the 1.3B shape is 24 layers of width 2048, 32 heads of 64.
- The local model's shape is not printed: the paper gives only 218M. Table 15 calls 262M a
  1024-wide, 18-layer model, so 218M is taken as 15 layers of 1024 (16 heads of 64). With
  that choice `megabyte_jax.flops` gives 2.12 GFLOP per trained byte, exactly the 350M
  transformer of `pg19_transformer.py`: the "equal training compute" of Table 9 holds.
- Batch 48 and learning rate 2e-4: Table 15's text row (the PG-19 runs are not listed apart).
- Steps: 80B bytes as the other text runs (Section 4), 80e9 / (48 * 8192) (derived).
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
- Data: PG-19 from a prepared TFDS catalog copy (`--config.data.data_dir`).

`:small` is a one-GPU twin (not from the paper): global 768 x 8, local 256 x 3 (a larger
global and smaller local model than `text_megabyte.py:small`, as 1.3B/218M is to
758M/262M), batch 16, learning rate 1e-3, 20,000 steps.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe, steps_for_bytes


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=8192, patch_size=8,
        global_dim=2048, global_layers=24, global_heads=32, global_head_dim=64,
        local_dim=1024, local_layers=15, local_heads=16, local_head_dim=64)
    paper_recipe(config)
    config.train.batch_size = 48
    config.train.learning_rate = 2e-4
    config.train.steps = steps_for_bytes(80e9, 48, 8192)
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=8192, patch_size=8,
        global_dim=768, global_layers=8, global_heads=12,
        local_dim=256, local_layers=3, local_heads=4)
    paper_recipe(config)
    config.train.batch_size = 16
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
