"""A tiny MEGABYTE for tests and smoke runs: seconds on a CPU, learns nothing useful."""

from megabyte_jax.experiment import base_config


def get_config():
  """Returns the experiment ConfigDict."""
  config = base_config("megabyte", seq_len=64, patch_size=8, global_dim=64, global_layers=1,
                       global_heads=2, local_dim=32, local_layers=1, local_heads=2)
  config.train.steps = 20
  config.train.batch_size = 4
  config.train.warmup_steps = 5
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.eval_batches = 2
  config.train.checkpoint_every = 10
  config.train.tensorboard = False
  config.eval.batch_size = 64
  config.data.chunk_bytes = 2 ** 16
  config.sample.num_bytes = 16
  return config
