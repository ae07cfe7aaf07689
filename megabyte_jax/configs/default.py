"""The quickstart model: a small MEGABYTE trained on the Python standard library on a CPU.

`make train` runs this config: 1.08M parameters (the 2026-12 MEGABYTE defaults with a SwiGLU
MLP), 512-byte windows of 64 patches of 8 bytes, 4,000 steps of 8 windows (16.4M bytes) on
two CPU cores (about 34,000 bytes/s), then a full pass over the held-out files (2% of the
stdlib's files, ~0.5 MB) and a sample: 1.780 bits per byte there, in 9 min 47 s (the GELU MLP:
1.795 at the same steps). The sizes were chosen by short timed runs on that machine (smaller
than the paper's models because the budget is minutes of CPU, not GPU-days): at a fixed
wall-clock budget a narrow local model and small batches learn fastest.
"""

from megabyte_jax.experiment import base_config


def get_config():
  """Returns the experiment ConfigDict."""
  config = base_config(
      "megabyte", seq_len=512, patch_size=4,
      global_dim=128, global_layers=2, global_heads=2,   # D_G = 128 / 4 = 32 per byte
      local_dim=64, local_layers=2, local_heads=2, activation="swiglu",
      cross_patch=4)   # the local model also attends to the previous patch's 4 bytes
  config.train.steps = 4200
  config.train.batch_size = 8
  config.train.learning_rate = 5e-3
  config.train.warmup_steps = 100
  config.train.log_every = 20
  config.train.eval_every = 500
  config.train.eval_batches = 4
  config.train.checkpoint_every = 1000
  config.data.eval_fraction = 0.02
  return config
