"""MEGABYTE on ImageNet 640x640: 1,228,800-byte sequences (Yu et al., 2023: Tables 5, 15).

    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet640_megabyte.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/imagenet640_megabyte.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, ImageNet640 row: global 125M (width 768, 12 layers), local 83M (width 768,
  8 layers), batch 32, learning rate 3e-4, context 1,228,800 bytes (640 x 640 x 3), P = 192.
- Table 14: the 125M shape has 12 heads of 64.
- Appendix A: patch scan, P = 192 = 8 x 8 pixels x 3 channels.
- Table 5: 2.282 bits per byte (Transformer 2.847, PerceiverAR 2.345).
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
Memory: full rematerialization and scanned layers, as `experiments/configs/long_1m.py`
(which trains 1,048,576-byte sequences on one 80 GB GPU). The number of updates is not
given: 50,000 is a placeholder.
Data: a local ImageNet copy resized to 640 x 640 by the `image_folder` builder
(`--config.data.files=DIR --config.data.eval_files=VALDIR`, both placeholders).

`:small` is a one-GPU twin (not from the paper): the same context, patch size and scan,
global 768 x 6, local 256 x 4, batch 1, learning rate 1e-3, 10,000 steps.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=1228800, patch_size=192,
        global_dim=768, global_layers=12, global_heads=12,
        local_dim=768, local_layers=8, local_heads=12,
        remat="full", scan_layers=True)
    paper_recipe(config)
    config.train.batch_size = 32
    config.train.learning_rate = 3e-4
    config.train.steps = 50000
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=1228800, patch_size=192,
        global_dim=768, global_layers=6, global_heads=12,
        local_dim=256, local_layers=4, local_heads=4,
        remat="full", scan_layers=True)
    paper_recipe(config)
    config.train.batch_size = 1
    config.train.learning_rate = 1e-3
    config.train.steps = 10000
  else:
    raise ValueError(f"size must be 'paper' or 'small', got {size!r}")
  config.eval.batch_size = 1
  config.train.eval_every = 1000
  config.train.eval_batches = 4
  config.train.checkpoint_every = 500
  config.data.name = "image_folder"
  config.data.files = "~/data/imagenet/train"
  config.data.eval_files = "~/data/imagenet/val"
  config.data.image_size = 640
  config.data.channels = 3
  config.data.order = "patch"
  config.data.patch_size = 192
  config.data.separator = -1
  config.data.chunk_bytes = 2 ** 26
  config.sample.prompt = ""
  config.sample.num_bytes = 0
  return config
