"""Sampling speed against MEGABYTE-pytorch, measured fairly: the same prompt and the same
number of bytes for both, in one process on one GPU.

    python experiments/bench/sample_vs_peer.py --config=experiments/configs/reference.py \
        --num_bytes=512 --batch_sizes=1,64 --peer

Ours: `megabyte_jax.generate` (KV caches, the fused local step where it applies), timed as
the median of `--repeats` calls after a compiling call. The peer (`--peer`; PyPI
`megabyte-pytorch` must be importable, see ../shared/bench/README.md) has no KV cache: as
its own `MEGABYTE.generate` does, it reruns the whole model on the sequence so far for every
new byte (bf16 autocast, top-k 0.9 and Gumbel sampling as its `generate`), here for exactly
`--num_bytes` bytes after the same prompt (its `generate` always fills the whole context).
Both models have random weights of the same shape (speed does not depend on them). Prints
one JSON line per measurement and, per batch size, our bytes/s over the peer's.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from megabyte_jax import generate
from megabyte_jax.models import build_model
from megabyte_jax.training.train_state import init_params

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/reference.py",
                                          "Model config (its `model` section is used).")
_PROMPT = flags.DEFINE_string("prompt", "def main(argv):\n", "The prompt, as text (UTF-8).")
_NUM_BYTES = flags.DEFINE_integer("num_bytes", 512, "Bytes generated after the prompt.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes (rows share the prompt).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of ours per batch size (median).")
_PEER = flags.DEFINE_bool("peer", False, "Also time MEGABYTE-pytorch.")
_PEER_BATCHES = flags.DEFINE_list("peer_batch_sizes", None, "Batch sizes for the peer "
                                  "(default: --batch_sizes).")


def _emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def time_ours(model, params, prompt: np.ndarray, num_bytes: int, batch: int,
              repeats: int) -> dict:
  """Bytes/s of `generate` continuing `prompt` (uint8 `[L]`) by `num_bytes` in `batch` rows."""
  rows = np.repeat(prompt[None].astype(np.int32), batch, axis=0)
  variables = {"params": params}
  start = time.perf_counter()
  jax.block_until_ready(generate(model, variables, rows, num_bytes, jax.random.key(0)))
  first = time.perf_counter() - start
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(generate(model, variables, rows, num_bytes, jax.random.key(i + 1)))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {"what": "sample", "who": "ours", "batch": batch, "prompt_bytes": len(prompt),
          "num_bytes": num_bytes, "seconds": round(seconds, 4),
          "bytes_per_s": round(batch * num_bytes / seconds, 1),
          "compile_s": round(first - seconds, 2)}


def time_peer(cfg, prompt: np.ndarray, num_bytes: int, batch: int) -> dict:
  """Bytes/s of MEGABYTE-pytorch of `cfg`'s shape continuing `prompt` by `num_bytes` bytes in
  `batch` rows, as its own `generate` samples (no KV cache)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from MEGABYTE_pytorch import MEGABYTE  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = MEGABYTE(num_tokens=256, dim=(cfg.global_dim, cfg.local_dim),
                   depth=(cfg.global_layers, cfg.local_layers),
                   max_seq_len=(cfg.seq_len // cfg.patch_size, cfg.patch_size),
                   heads=cfg.local_heads, dim_head=cfg.local_attention_head_dim,
                   flash_attn=True).to("cuda").eval()

  def sample_next(logits):   # the peer's top_k(thres=0.9) + gumbel_sample(temperature=1)
    k = max(1, int((1 - 0.9) * logits.shape[-1]))
    values, index = torch.topk(logits, k)
    filtered = torch.full_like(logits, float("-inf")).scatter_(1, index, values)
    noise = -torch.log(-torch.log(torch.rand_like(filtered).clamp(1e-20, 1.0)).clamp(1e-20))
    return (filtered + noise).argmax(dim=-1, keepdim=True)

  def run(n):
    seq = torch.from_numpy(np.repeat(prompt[None].astype(np.int64), batch, 0)).to("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
      for _ in range(n):
        logits = model(seq)[:, -1].float()
        seq = torch.cat((seq, sample_next(F.log_softmax(logits, -1))), dim=-1)
    torch.cuda.synchronize()
    return seq

  run(4)   # warm-up: kernels and allocator
  start = time.perf_counter()
  run(num_bytes)
  seconds = time.perf_counter() - start
  torch.cuda.empty_cache()
  return {"what": "sample", "who": "peer", "batch": batch, "prompt_bytes": len(prompt),
          "num_bytes": num_bytes, "seconds": round(seconds, 4),
          "bytes_per_s": round(batch * num_bytes / seconds, 2)}


def ratios(records: Sequence[dict]) -> list[dict]:
  """Per batch size: our bytes/s over the peer's."""
  ours = {r["batch"]: r["bytes_per_s"] for r in records if r["who"] == "ours"}
  peer = {r["batch"]: r["bytes_per_s"] for r in records if r["who"] == "peer"}
  return [{"what": "sample_ratio", "batch": b, "ours_bytes_per_s": ours[b],
           "peer_bytes_per_s": peer[b], "ours_over_peer": round(ours[b] / peer[b], 1)}
          for b in sorted(ours) if b in peer]


def main(argv):
  del argv
  model, cfg = build_model(_CONFIG.value.model)
  prompt = np.frombuffer(_PROMPT.value.encode("utf-8"), np.uint8)
  _emit({"what": "run", "device": jax.devices()[0].device_kind, "jax": jax.__version__,
         "model": type(model).__name__, "seq_len": cfg.seq_len, "prompt": _PROMPT.value,
         "num_bytes": _NUM_BYTES.value})
  params = init_params(model, cfg.seq_len, jax.random.key(0))
  params = jax.tree_util.tree_map(jnp.asarray, params)
  records = []
  for batch in (int(b) for b in _BATCHES.value):
    records.append(time_ours(model, params, prompt, _NUM_BYTES.value, batch, _REPEATS.value))
    _emit(records[-1])
  del params
  if _PEER.value:
    for batch in (int(b) for b in (_PEER_BATCHES.value or _BATCHES.value)):
      records.append(time_peer(cfg, prompt, _NUM_BYTES.value, batch))
      _emit(records[-1])
  for row in ratios(records):
    _emit(row)


if __name__ == "__main__":
  app.run(main)
