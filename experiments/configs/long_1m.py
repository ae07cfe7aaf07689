"""MEGABYTE on 1,048,576-byte (1 MiB) sequences, trained on ONE 80 GB GPU.

The paper's title promise at the paper's own scale of "long": its longest task,
ImageNet-640, uses T = 1,228,800 with P = 192. Choices here, and why:

- P = 128, so K = T / P = 8,192 patches for the global model, a length cuDNN flash
  attention handles in linear memory; the local model attends within 128 bytes. P ~ T^(1/3) = 102
  balances the two attention costs (paper, Section 3); 128 is the power of two above it.
- Global 1024 x 12 layers (D_G = 1024 / 128 = 8 per byte), local 512 x 6 layers, 8 heads of
  64: the reference model's widths, 151M + 19M non-embedding parameters. The global
  position table has T x D_G = 8.4M entries.
- Memory: the local model runs over all 1,048,576 bytes at once (8,192 patches as its
  batch), ~25 GB of activations per local layer in bf16. `remat="full"` keeps only each
  block's input (6 GB for the local stack) and recomputes the rest in the backward pass;
  `scan_layers` keeps compile time short. One sequence per step (batch 1); use
  `train.grad_accum_steps` or more GPUs for larger batches.
"""

from megabyte_jax.experiment import base_config


def get_config():
  """Returns the experiment ConfigDict."""
  config = base_config(
      "megabyte", seq_len=1048576, patch_size=128,
      global_dim=1024, global_layers=12, global_heads=8, global_head_dim=64,
      local_dim=512, local_layers=6, local_heads=8, local_head_dim=64,
      dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True)
  config.train.batch_size = 1
  config.train.steps = 10000
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 500
  config.train.eval_every = 1000
  config.train.eval_batches = 1
  config.train.checkpoint_every = 500
  config.eval.batch_size = 1
  config.data.chunk_bytes = 2 ** 25
  return config
