"""The shared benchmark shape ("paper-small"): MEGABYTE-pytorch's reference configuration.

seq_len 8192, patch 8, global 1024 x 12 layers, local 512 x 6 layers, 8 heads of 64, batch 8,
bf16 compute with float32 master weights, RMSNorm and no biases as MEGABYTE-pytorch's attention
blocks (its MLPs keep biases, and it adds rotary embeddings: 153.6M parameters there, 146.2M
here). Figures in BENCHMARKS.md before session 5 (2026-11-23) used LayerNorm with biases
(146.3M); `--config.model.norm=layernorm --config.model.use_bias=True` restores that.
Since 2026-12 the MEGABYTE defaults of the learning comparison apply here too (RESULTS.md:
linear patch embedder, full global-to-local projection, token shift, sequence-wide byte
shift; 157.7M parameters), and since 2026-12-07 rotary positions instead of position tables
(153.5M parameters; `--config.model.positions=learned` restores the tables). BENCHMARKS.md
figures before 2026-12 are of the paper's formulation, which
`--config.model.token_shift=False --config.model.global_to_local=slice
--config.model.patch_embed=concat --config.model.byte_shift=patch
--config.model.positions=learned` restores. This is the configuration of the speed comparisons
in BENCHMARKS.md (`experiments/bench/train_throughput.py`, `generate_bench.py`), runnable as
a training run on one GPU with any of the data sources.
"""

from megabyte_jax.experiment import base_config


def get_config():
  """Returns the experiment ConfigDict."""
  config = base_config(
      "megabyte", seq_len=8192, patch_size=8,
      global_dim=1024, global_layers=12, global_heads=8, global_head_dim=64,
      local_dim=512, local_layers=6, local_heads=8, local_head_dim=64,
      dtype="bfloat16", param_dtype="float32", norm="rmsnorm", use_bias=False)
  config.train.batch_size = 8
  config.train.steps = 20000
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 500
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 8
  return config
