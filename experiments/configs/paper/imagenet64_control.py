"""MEGABYTE on ImageNet 64x64, the controlled comparison (Yu et al., 2023: Tables 5, 15).

    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet64_control.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet64_control.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, "ImageNet64 ctrl" row: global 1.3B (width 2048, 24 layers), local 1.3B (width
  2048, 24 layers), batch 256, learning rate 3e-4, context 12,288 bytes, P = 12.
- Table 14: the 1.3B shape has 32 heads of 64.
- Table 5: 3.52 bits per byte at 64 x 64 (Transformer 3.62, PerceiverAR 3.55).
- Appendix A: patch scan, P = 12 = 2 x 2 pixels x 3 channels.
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
One change: the paper's width 2048 is not a multiple of P = 12 (see `imagenet64_megabyte.py`);
the global width here is 2052 = 12 x 171, with 32 heads of 64 (attention width 2048). The
local model keeps 2048. The number of updates is not given: 100,000 is a placeholder.
Data: `imagenet_resized/64x64` from a prepared TFDS catalog copy, patch order, no separator.

`:small` is a one-GPU twin (not from the paper): global and local both 384 x 4 (6 heads),
batch 32, learning rate 1e-3, 20,000 steps.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=12288, patch_size=12,
        global_dim=2052, global_layers=24, global_heads=32, global_head_dim=64,
        local_dim=2048, local_layers=24, local_heads=32, local_head_dim=64)
    paper_recipe(config)
    config.train.batch_size = 256
    config.train.learning_rate = 3e-4
    config.train.steps = 100000
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=12288, patch_size=12,
        global_dim=384, global_layers=4, global_heads=6,
        local_dim=384, local_layers=4, local_heads=6)
    paper_recipe(config)
    config.train.batch_size = 32
    config.train.learning_rate = 1e-3
    config.train.steps = 20000
  else:
    raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
  config.eval.batch_size = min(config.train.batch_size, 32)
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.data.name = "imagenet_resized/64x64"
  config.data.feature = "image"
  config.data.order = "patch"
  config.data.patch_size = 12
  config.data.separator = -1
  config.sample.prompt = ""
  config.sample.num_bytes = 0
  return config
