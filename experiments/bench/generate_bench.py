"""Generation speed: bytes/s of KV-cached sampling for MEGABYTE and the byte transformer.

    python experiments/bench/generate_bench.py --preset=tiny        # CPU smoke run, seconds
    python experiments/bench/generate_bench.py --preset=reference   # on a GPU

Prints one JSON line per measurement: for each model (MEGABYTE, and the byte transformer
baseline sized to about a quarter of MEGABYTE's parameters, the paper's comparison) and each
batch size, bytes generated per second by `megabyte_jax.generate` (both models with KV
caches), and, for comparison, the plain uncached sampler (`sampling.sample_uncached`, one
full forward pass over the window per byte, batch 1 only). The first line describes the run
(device, versions, configs, parameter counts).

Presets:
  reference  the shared benchmark configuration (BENCHMARKS.md): seq_len 8192,
             patch 8, global 1024 x 12 layers, local 512 x 6 layers, 8 heads of 64, bf16;
             baseline byte transformer 512 x 10 layers, 8 heads of 64 (~1/4 the parameters).
  tiny       a few-second CPU check of the same code path.

Each timing is the median of `--repeats` calls after one warm-up call with the same shapes
(compilation is reported separately as `compile_s`), with random parameters (`random_params`:
speed does not depend on their values). Sampling uses temperature 1 over all 256 bytes.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from megabyte_jax import ByteTransformer, Megabyte, MegabyteConfig, TransformerConfig, generate
from megabyte_jax.inference.decoding import FUSED_LOCAL, DecodeOptions, decoder_for
from megabyte_jax.inference.generation import cached_logits
from megabyte_jax.flops import model_cost
from megabyte_jax.inference.sampling import sample_uncached
from megabyte_jax.training.train_state import init_params

_PRESET = flags.DEFINE_enum("preset", "tiny", ["tiny", "reference"], "Model sizes.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
_MODELS = flags.DEFINE_list("models", ["megabyte", "transformer"], "Models to time.")
_NUM_BYTES = flags.DEFINE_integer("num_bytes", None, "Bytes generated per timed call; "
                                  "default: 64 (tiny), 1024 (reference).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 13, "Prompt bytes (prefilled) per row.")
_UNCACHED_BYTES = flags.DEFINE_integer("uncached_bytes", 16, "Bytes for the uncached "
                                       "sampler at batch 1 (0: skip it).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median).")
_DTYPE = flags.DEFINE_string("dtype", None, "Override the compute dtype of both models.")
_TF_DIM = flags.DEFINE_integer("transformer_dim", None, "Baseline width (default: preset).")
_TF_LAYERS = flags.DEFINE_integer("transformer_layers", None, "Baseline depth.")
_TF_HEADS = flags.DEFINE_integer("transformer_heads", None, "Baseline heads.")
_FUSED = flags.DEFINE_list("fused", ["auto"], "DecodeOptions.fused values to time, in order "
                           "(auto: the fused local step on GPU where it applies; off: XLA).")
_CHECK_BYTES = flags.DEFINE_integer("check_bytes", 0, "If > 0 and several --fused modes are "
                                    "given: compare their teacher-forced logits over this many "
                                    "bytes (batch 1) and report the largest difference.")


def configs() -> tuple[MegabyteConfig, TransformerConfig]:
  """The MEGABYTE and baseline configs of the chosen preset and overrides."""
  if _PRESET.value == "reference":
    mb = MegabyteConfig(seq_len=8192, patch_size=8, global_dim=1024, global_layers=12,
                        global_heads=8, global_head_dim=64, local_dim=512, local_layers=6,
                        local_heads=8, local_head_dim=64, dtype="bfloat16")
    tf = dict(seq_len=8192, dim=512, layers=10, heads=8, dtype="bfloat16")
  else:
    mb = MegabyteConfig(seq_len=256, patch_size=8, global_dim=64, global_layers=2,
                        global_heads=2, local_dim=32, local_layers=2, local_heads=2)
    tf = dict(seq_len=256, dim=32, layers=2, heads=2)
  tf.update({k: v for k, v in (("dim", _TF_DIM.value), ("layers", _TF_LAYERS.value),
                               ("heads", _TF_HEADS.value)) if v is not None})
  tf = TransformerConfig(**tf)
  if _DTYPE.value:
    mb, tf = mb.replace(dtype=_DTYPE.value), tf.replace(dtype=_DTYPE.value)
  return mb, tf


def random_params(model, seq_len: int, seed: int = 0):
  """Parameters of `model`'s shapes and dtypes, drawn with numpy (norm scales 1, the rest
  normal with std 0.02): generation speed does not depend on their values, and this avoids
  compiling the model's initializers."""
  shapes = jax.eval_shape(lambda key: init_params(model, seq_len, key), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if "scale" in jax.tree_util.keystr(path):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(leaf.shape, np.float32), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def _peak_memory() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def time_cached(name, model, params, batch, prompt_len, num_bytes, repeats,
                options: DecodeOptions = DecodeOptions()) -> dict:
  """Median seconds of `generate` for one batch size, after a warm-up (compiling) call."""
  prompt = np.random.default_rng(0).integers(0, 256, (batch, prompt_len)).astype(np.int32)
  variables = {"params": params}
  start = time.perf_counter()
  jax.block_until_ready(generate(model, variables, prompt, num_bytes, jax.random.key(0),
                                 options=options))
  compile_s = time.perf_counter() - start
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(generate(model, variables, prompt, num_bytes, jax.random.key(i + 1),
                                   options=options))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {"what": "generate", "model": name, "sampler": "kv_cached", "batch": batch,
          "prompt_len": prompt_len, "num_bytes": num_bytes, "seconds": round(seconds, 5),
          "bytes_per_s": round(batch * num_bytes / seconds, 1),
          "ms_per_step": round(1000 * seconds / num_bytes, 4),
          "compile_s": round(compile_s - seconds, 2), "peak_memory_bytes": _peak_memory()}


def time_uncached(name, model, params, prompt_len, num_bytes) -> dict:
  """Seconds of the plain sampler (batch 1), after a warm-up call that compiles it."""
  prompt = np.random.default_rng(0).integers(0, 256, (prompt_len,)).astype(np.uint8)
  variables = {"params": params}
  start = time.perf_counter()
  sample_uncached(model, variables, prompt, 1, jax.random.key(0))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  sample_uncached(model, variables, prompt, num_bytes, jax.random.key(1))
  seconds = time.perf_counter() - start
  return {"what": "generate", "model": name, "sampler": "uncached", "batch": 1,
          "prompt_len": prompt_len, "num_bytes": num_bytes, "seconds": round(seconds, 5),
          "bytes_per_s": round(num_bytes / seconds, 2),
          "ms_per_step": round(1000 * seconds / num_bytes, 4),
          "compile_s": round(compile_s, 2)}


def uses_fused(model, params, batch, options: DecodeOptions) -> bool:
  """Whether `generate` runs the fused local step for this model, batch and options."""
  decoder = decoder_for(model, options)
  return FUSED_LOCAL in jax.eval_shape(lambda p: decoder.prepare(p, batch), params)


def compare_modes(name, model, params, modes, num_bytes) -> dict:
  """Teacher-forced logits of the cached decoder under each `DecodeOptions.fused` mode,
  against the first: the largest absolute difference and how often the argmax agrees."""
  tokens = np.random.default_rng(1).integers(0, 256, (1, num_bytes + 1)).astype(np.int32)
  logits = {}
  for mode in modes:
    logits[mode] = np.asarray(cached_logits(model, {"params": params}, tokens, 1,
                                            options=DecodeOptions(fused=mode)))
  base = logits[modes[0]]
  return {"what": "fused_check", "model": name, "bytes": num_bytes, "against": modes[0],
          **{mode: {"max_abs_logit_diff": float(np.max(np.abs(l - base))),
                    "logit_scale": float(np.max(np.abs(base))),
                    "argmax_agreement": float(np.mean(l.argmax(-1) == base.argmax(-1)))}
             for mode, l in logits.items() if mode != modes[0]}}


def main(argv):
  del argv
  mb_cfg, tf_cfg = configs()
  num_bytes = _NUM_BYTES.value or (1024 if _PRESET.value == "reference" else 64)
  models = {"megabyte": (Megabyte(mb_cfg), mb_cfg), "transformer": (ByteTransformer(tf_cfg),
                                                                     tf_cfg)}
  params_count = {k: model_cost(c).params for k, (_, c) in models.items()}
  device = jax.devices()[0]
  _emit({"what": "run", "preset": _PRESET.value, "device": device.device_kind,
         "backend": jax.default_backend(), "jax": jax.__version__,
         "python": platform.python_version(), "megabyte": mb_cfg.to_dict(),
         "transformer": tf_cfg.to_dict(), "params": params_count,
         "param_ratio_megabyte_to_transformer": round(params_count["megabyte"]
                                                      / params_count["transformer"], 3)})
  for name in _MODELS.value:
    model, cfg = models[name]
    params = random_params(model, cfg.seq_len)
    for mode in _FUSED.value:
      options = DecodeOptions(fused=mode)
      for batch in (int(b) for b in _BATCHES.value):
        record = time_cached(name, model, params, batch, _PROMPT_LEN.value, num_bytes,
                             _REPEATS.value, options)
        record.update(params=params_count[name], fused_mode=mode,
                      fused=uses_fused(model, params, batch, options))
        _emit(record)
    if _CHECK_BYTES.value and len(_FUSED.value) > 1:
      _emit(compare_modes(name, model, params, _FUSED.value, _CHECK_BYTES.value))
    if _UNCACHED_BYTES.value:
      record = time_uncached(name, model, params, _PROMPT_LEN.value, _UNCACHED_BYTES.value)
      record["params"] = params_count[name]
      _emit(record)
    del params


if __name__ == "__main__":
  app.run(main)
