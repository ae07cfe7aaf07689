"""The byte-level Transformer baseline on the paper's text datasets (Yu et al., 2023: Table 15,
text row; Tables 2 and 7).

    python -m megabyte_jax.train --config=experiments/configs/paper/text_transformer.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/text_transformer.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, text row: Transformer 320M (width 1024, 22 layers), batch 72, learning rate 2e-4,
  context 1,024 bytes.
- Table 14: a 1024-wide model has 16 heads of 64.
- Appendix A.1: `megabyte_jax.recipes.paper_recipe` (Adam 0.9/0.98, weight decay 0.1,
  clipping 1.0, 500 warmup updates, decay to 0, ReLU, dropout 0.1, init std 0.006).
- Section 4 / Table 2: 80B training bytes, so steps = 80e9 / (72 * 1024) = 1,085,069
  (derived).
- Data: as `text_megabyte.py` (PG-19 from a prepared TFDS copy by default).
Our count: 277M in the transformer stack (the paper says 320M; its counting is not given).
Training FLOPs per byte: 1.94G, equal to `text_megabyte.py`'s.

`:small` is a one-GPU twin (not from the paper): width 320 x 6 layers (5 heads of 64),
context 1,024, batch 128, learning rate 1e-3, 20,000 steps; about the training FLOPs per
byte of `text_megabyte.py:small`.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe, steps_for_bytes


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config("transformer", seq_len=1024, dim=1024, layers=22, heads=16,
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
