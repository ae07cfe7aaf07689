"""The quickstart model: a small MEGABYTE trained on the Python standard library on a CPU.

`make train` runs this config: 0.62M parameters (the 2026-12 MEGABYTE defaults with a SwiGLU
MLP), 512-byte windows of 128 patches of 4 bytes, a 2-layer global model, and a local model
that also attends to the previous patch's 4 bytes (cross-patch attention); 4,200 steps of 8
windows (17.2M bytes) on two CPU cores (about 32,000 bytes/s), then a full pass over the
held-out files (2% of the stdlib's files, ~0.5 MB) and a sample: 1.673 bits per byte there
(gzip -9 on the same files: 1.687), in 9 min 40 s from a fresh clone, the install included.
The sizes were chosen by timed runs on that machine (RESULTS.md, "The quickstart model on a
CPU"): at a fixed wall-clock budget, patches of 4 beat patches of 8, a shallower global model
trains more steps for the same quality, and cross-patch attention is the largest single gain.
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
