"""MEGABYTE on ImageNet 256x256 (Yu et al., 2023: Tables 5, 10, 12, 15, 16).

    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet256_megabyte.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet256_megabyte.py:small ...
    # Table 16 (scan order): ... --config.data.order=raster      (paper: 3.428 vs 3.158)
    # Table 12 (patch size): ... --config.model.patch_size=48 --config.data.patch_size=48
    #                        or  --config.model.patch_size=768 --config.data.patch_size=768
    #                        with --config.model.global_dim=P*D_G (paper: 3.178 / 3.158 / 3.186)

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, ImageNet256 row: global 125M (width 768, 12 layers), local 125M (width 768,
  12 layers), batch 16, learning rate 2e-4, context 196,608 bytes (256 x 256 x 3), P = 192.
- Table 14: the 125M shape has 12 heads of 64.
- Appendix A: patch scan, P = 192 = 8 x 8 pixels x 3 channels.
- Table 5: 3.158 bits per byte (Transformer 3.801, PerceiverAR 3.373).
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
Memory: the local model runs over all 196,608 bytes of a sequence at once, so each block
keeps only its input (`remat="full"`) and the layers are scanned (`scan_layers`). The number
of updates is not given: 100,000 is a placeholder.
Data: the paper's ImageNet at 256 x 256; here the `image_folder` builder resizes a local
ImageNet copy (`--config.data.files=DIR --config.data.eval_files=VALDIR`, both placeholders).

`:small` is a one-GPU twin (not from the paper): the same context, patch size and scan,
global 768 x 6, local 256 x 4, batch 2, learning rate 1e-3, 20,000 steps.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=196608, patch_size=192,
        global_dim=768, global_layers=12, global_heads=12,
        local_dim=768, local_layers=12, local_heads=12,
        remat="full", scan_layers=True)
    paper_recipe(config)
    config.train.batch_size = 16
    config.train.learning_rate = 2e-4
    config.train.steps = 100000
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=196608, patch_size=192,
        global_dim=768, global_layers=6, global_heads=12,
        local_dim=256, local_layers=4, local_heads=4,
        remat="full", scan_layers=True)
    paper_recipe(config)
    config.train.batch_size = 2
    config.train.learning_rate = 1e-3
    config.train.steps = 20000
  else:
    raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
  config.eval.batch_size = 2
  config.train.eval_every = 1000
  config.train.eval_batches = 4
  config.train.checkpoint_every = 1000
  config.data.name = "image_folder"
  config.data.files = "~/data/imagenet/train"
  config.data.eval_files = "~/data/imagenet/val"
  config.data.image_size = 256
  config.data.channels = 3
  config.data.order = "patch"
  config.data.patch_size = 192
  config.data.separator = -1
  config.data.chunk_bytes = 2 ** 25
  config.sample.prompt = ""
  config.sample.num_bytes = 0
  return config
