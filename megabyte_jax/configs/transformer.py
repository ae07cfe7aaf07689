"""The byte-transformer baseline at about the training FLOPs per byte of `default.py`.

Same data, window (512 bytes) and optimisation as the default MEGABYTE; the width and depth
are chosen so that `megabyte_jax.flops.model_cost` gives ~1.4 MFLOP per trained byte for both
(the paper's equal-compute comparison, at toy scale).
"""

from megabyte_jax.experiment import base_config


def get_config():
  """Returns the experiment ConfigDict."""
  config = base_config("transformer", seq_len=512, dim=64, layers=2, heads=2)
  config.train.steps = 3000
  config.train.batch_size = 8
  config.train.learning_rate = 5e-3
  config.train.warmup_steps = 100
  config.train.log_every = 20
  config.train.eval_every = 500
  config.train.eval_batches = 4
  config.train.checkpoint_every = 500
  config.data.eval_fraction = 0.02
  return config
