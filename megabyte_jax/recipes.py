"""The paper's training recipe (Yu et al., 2023, Appendix A.1) as a change to a config.

`paper_recipe(config)` sets the optimisation and regularisation the paper describes for every
one of its models, so the configs under `experiments/configs/paper/` carry only what differs
between experiments (sizes, patch size, context, batch, learning rate, data):

- Adam with beta1 0.9, beta2 0.98, weight decay 0.1, gradient clipping at 1.0;
- 500 warmup updates, then decay to a final learning rate of 0 (the paper decays
  polynomially; ours is the cosine of `train_state.learning_rate_schedule` with
  `min_lr_ratio = 0`);
- pre-norm blocks, ReLU, dropout 0.1 everywhere except on the embeddings;
- truncated-normal initialisation with standard deviation 0.006 (embeddings included);
- the paper's formulation of the model (`config.PAPER_FORMULATION`: concatenated byte
  embeddings into the global model, sliced global-to-local projection, a pad at every
  local patch start, no token shift), where our defaults differ;
- the output projection is the local byte-embedding matrix (`tie_embeddings`), as in the
  paper's output equation;
- mixed precision: bfloat16 compute with float32 master weights.
"""

from __future__ import annotations

import ml_collections

from megabyte_jax.config import PAPER_FORMULATION

PAPER_MODEL = dict(activation="relu", norm="layernorm", dropout=0.1, embed_dropout=0.0,
                   init_std=0.006, embed_init_std=0.006, tie_embeddings=True,
                   dtype="bfloat16", param_dtype="float32", token_shift=False)
"""Model fields of the paper's recipe (Appendix A.1), for both model kinds."""

PAPER_TRAIN = dict(b1=0.9, b2=0.98, weight_decay=0.1, grad_clip=1.0, warmup_steps=500,
                   min_lr_ratio=0.0)
"""Optimizer fields of the paper's recipe (Appendix A.1)."""


def paper_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Applies the paper's recipe (`PAPER_MODEL`, `PAPER_TRAIN`) to `config` in place and
  returns it. Sizes, patch size, context, batch and learning rate are left alone."""
  for key, value in PAPER_MODEL.items():
    config.model[key] = value
  if config.model.kind == "megabyte":      # the paper's model (`config.PAPER_FORMULATION`)
    for key, value in PAPER_FORMULATION.items():
      config.model[key] = value
  for key, value in PAPER_TRAIN.items():
    config.train[key] = value
  return config


def steps_for_bytes(total_bytes: float, batch_size: int, seq_len: int) -> int:
  """Training steps that read `total_bytes` bytes in batches of `batch_size` x `seq_len`
  (rounded to the nearest step, at least 1)."""
  if batch_size <= 0 or seq_len <= 0:
    raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
  return max(1, round(total_bytes / (batch_size * seq_len)))
