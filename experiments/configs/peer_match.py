"""The learning comparison against MEGABYTE-pytorch (issue 20): same shape, recipe, data.

Shape: 2,048-byte windows, patches of 8, global 512 x 6 layers (8 heads of 64), local
256 x 3 (8 heads of 64, as the peer: an attention 512 wide inside a 256-wide model), batch
32, bf16 compute with float32 weights.
Recipe (the peer trainer's, `megabyte_pytorch_train.py`): AdamW, peak learning rate 1.5e-3,
beta2 0.95, weight decay 0.1, clipping 1.0, 5% linear warmup, cosine decay to 10%, 3,000
steps (197M bytes).
Data: the code corpus of `experiments.corpus` (site-packages `.py` files in ~1 MB shards,
whole packages held out for validation), built first on the machine that trains:

    python -m experiments.corpus packages --out=experiments/data/code
    python -m megabyte_jax.train --config=experiments/configs/peer_match.py --workdir=runs/pm
    python3 megabyte_pytorch_train.py --train experiments/data/code/train \\
        --heldout 'experiments/data/code/eval/**/*.py' --steps 3000

The final eval scores every held-out file from an empty context in consecutive windows, as
the peer trainer does. RESULTS.md has the figures.
"""

from megabyte_jax.experiment import base_config


def get_config(model: str = "megabyte"):
  """Returns the experiment ConfigDict; `peer_match.py:transformer` gives the byte
  Transformer (256 x 3, 4 heads) with the same recipe and data."""
  if model == "transformer":
    config = base_config("transformer", seq_len=2048, dim=256, layers=3, heads=4,
                         dtype="bfloat16", param_dtype="float32")
  else:
    config = base_config(
        "megabyte", seq_len=2048, patch_size=8,
        global_dim=512, global_layers=6, global_heads=8,
        local_dim=256, local_layers=3, local_heads=8, local_head_dim=64,
        dtype="bfloat16", param_dtype="float32")
  config.data.files = "experiments/data/code/train"
  config.data.eval_files = "experiments/data/code/eval"
  config.train.steps = 3000
  config.train.batch_size = 32
  config.train.learning_rate = 1.5e-3
  config.train.warmup_steps = 150
  config.train.min_lr_ratio = 0.1
  config.train.weight_decay = 0.1
  config.train.b2 = 0.95
  config.train.grad_clip = 1.0
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.eval_batches = 8
  config.train.checkpoint_every = 1000
  config.train.tensorboard = False
  config.eval.batch_size = 64
  config.sample.num_bytes = 256
  return config
