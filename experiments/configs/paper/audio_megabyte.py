"""MEGABYTE on raw audio (Yu et al., 2023: Section 6, Table 15).

    python -m megabyte_jax.train --config=experiments/configs/paper/audio_megabyte.py --workdir=W
    python -m megabyte_jax.train --config=experiments/configs/paper/audio_megabyte.py:small ...

Where each number comes from (the paper, arXiv:2305.07185):
- Table 15, audio row: global 350M (width 1024, 24 layers), local 125M (width 768,
  12 layers), batch 256, learning rate 2e-4, context 524,288 bytes, P = 32.
- Table 14: 1024-wide models have 16 heads of 64; 768-wide ones 12 heads of 64.
- Section 6: raw 16 kHz, 16-bit audio files read as bytes (32k bytes per second), so
  `data.encoding="pcm16"` (lossless little-endian samples) and `data.sample_rate=16000`.
- Result: 3.477 bits per byte (PerceiverAR 3.543, Transformer 3.567).
- Appendix A.1: `megabyte_jax.recipes.paper_recipe`.
Memory: full rematerialization and scanned layers (the local model runs over all 524,288
bytes of a sequence). The number of updates is not given: 100,000 is a placeholder.
Data: a folder of WAV files through the `audio_folder` builder (`--config.data.files=DIR`,
a placeholder); no separator between files, so the two bytes of a sample stay aligned.

`:small` is a one-GPU twin (not from the paper): the same context and patch size, global
512 x 6, local 256 x 4, batch 2, learning rate 1e-3, 20,000 steps.
"""

from megabyte_jax.experiment import base_config
from megabyte_jax.recipes import paper_recipe


def get_config(size: str = "paper"):
  """Returns the experiment ConfigDict; `size` is "paper" or "small" (the one-GPU twin)."""
  if size == "paper":
    config = base_config(
        "megabyte", seq_len=524288, patch_size=32,
        global_dim=1024, global_layers=24, global_heads=16,
        local_dim=768, local_layers=12, local_heads=12,
        remat="full", scan_layers=True)
    paper_recipe(config)
    config.train.batch_size = 256
    config.train.learning_rate = 2e-4
    config.train.steps = 100000
    config.mesh.data, config.mesh.fsdp = 1, -1
  elif size == "small":
    config = base_config(
        "megabyte", seq_len=524288, patch_size=32,
        global_dim=512, global_layers=6, global_heads=8,
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
  config.data.name = "audio_folder"
  config.data.files = "~/data/audio"
  config.data.encoding = "pcm16"
  config.data.sample_rate = 16000
  config.data.separator = -1
  config.data.chunk_bytes = 2 ** 25
  config.sample.prompt = ""
  config.sample.num_bytes = 0
  return config
