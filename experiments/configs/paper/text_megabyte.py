"""MEGABYTE on the paper's text datasets (Yu et al., 2023: Table 15, text row; Tables 2 and 7).

    python -m megabyte_jax.train --config=experiments/configs/paper/text_megabyte.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/text_megabyte.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, text row: global model 758M (width 2048, 14 layers), local model 262M (width
  1024, 18 layers), batch 48, learning rate 2e-4, context 8,192 bytes, patch size 8.
- Table 14: heads of a 2048-wide model 32 x 64; of a 1024-wide model 16 x 64.
- Appendix A.1: the recipe of `megabyte_jax.recipes.paper_recipe` (Adam 0.9/0.98, weight decay
  0.1, clipping 1.0, 500 warmup updates, decay to 0, ReLU, dropout 0.1, init std 0.006).
- Section 4 / Table 2: every text model sees 80B bytes, so steps = 80e9 / (48 * 8192) =
  203,451 (derived, not printed in the paper).
- Data: Table 2 covers PG-19, Stories, Books, arXiv and Code; this config reads PG-19 from a
  prepared TFDS catalog copy (`--config.data.data_dir`); any other corpus works with
  `--config.data.name=local_files --config.data.files=...`.
- Mesh: fully sharded data parallel over every device, as the paper trained (fairscale FSDP).
  Table 15 does not say whether 48 is the global or the per-GPU batch; it is used as global.
Our parameter counts (`megabyte_jax.flops`): global stack 705M, local stack 227M; the
paper's figures are 7-15% larger (its counting is not given). Training FLOPs per byte: 1.94G,
equal to `text_transformer.py`'s, as the paper's compute-matched comparison requires.

`:small` is a one-GPU twin (not from the paper): the same context and patch size, global
768 x 6, local 256 x 4, batch 16, learning rate 1e-3 (small models train well at a higher
rate; not tuned), 20,000 steps; compute-matched with `text_transformer.py:small`.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe, steps_for_bytes


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=8192, patch_size=8,
        global_dim=2048, global_layers=14, global_heads=32, global_head_dim=64,
        local_dim=1024, local_layers=18, local_heads=16, local_head_dim=64)
    paper_recipe(config)
    config.train.batch_size = 48
    config.train.learning_rate = 2e-4
    config.train.steps = steps_for_bytes(80e9, 48, 8192)
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=8192, patch_size=8,
        global_dim=768, global_layers=6, global_heads=12,
        local_dim=256, local_layers=4, local_heads=4)
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
