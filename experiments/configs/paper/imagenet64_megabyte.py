"""MEGABYTE on ImageNet 64x64, the state-of-the-art run (Yu et al., 2023: Tables 4, 15).

    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet64_megabyte.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet64_megabyte.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, "ImageNet64 SOTA" row: global 2.7B (width 2560, 32 layers), local 350M (width
  1024, 24 layers), batch 2, learning rate 2e-4, context 12,288 bytes (64 x 64 x 3), P = 12.
- Table 14: the 2.7B shape has 32 heads of 80; the 350M shape 16 heads of 64.
- Appendix A: patch scan, P = 12 = 2 x 2 pixels x 3 channels (`data.order="patch"`).
- Table 4: 3.40 bits per byte, equal to PerceiverAR at half the GPU hours.
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
One change: the paper's width 2560 is not a multiple of P = 12, and our patch embedding
concatenates P byte embeddings of D_G each, so the width must be P * D_G. 2556 = 12 x 213 is
the nearest multiple (32 heads of 80 keep the paper's attention width of 2560).
The number of updates is not given in the paper: 500,000 is a placeholder. Table 15 does
not say whether batch 2 is per GPU or global; it is used as global here.
Data: `imagenet_resized/64x64` from a prepared TFDS catalog copy (`--config.data.data_dir`),
images as bytes in patch order, no separator between images (patches stay aligned).

`:small` is a one-GPU twin (not from the paper): global 768 x 6 (12 heads), local 256 x 4,
batch 8, learning rate 1e-3, 20,000 steps, same context, patch size and scan.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=12288, patch_size=12,
        global_dim=2556, global_layers=32, global_heads=32, global_head_dim=80,
        local_dim=1024, local_layers=24, local_heads=16, local_head_dim=64)
    paper_recipe(config)
    config.train.batch_size = 2
    config.train.learning_rate = 2e-4
    config.train.steps = 500000
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=12288, patch_size=12,
        global_dim=768, global_layers=6, global_heads=12,
        local_dim=256, local_layers=4, local_heads=4)
    paper_recipe(config)
    config.train.batch_size = 8
    config.train.learning_rate = 1e-3
    config.train.steps = 20000
  else:
    raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
  config.eval.batch_size = config.train.batch_size
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.data.name = "imagenet_resized/64x64"
  config.data.feature = "image"
  config.data.order = "patch"
  config.data.patch_size = 12
  config.data.separator = -1
  config.sample.prompt = ""
  config.sample.num_bytes = 0   # sample images with `python -m megabyte_jax.sample --output=x.png`
  return config
