"""Fast generation with KV caches: `generate(model, variables, prompt, num_bytes, rng)`.

    out = megabyte_jax.generate(model, variables, prompt, num_bytes, jax.random.key(0),
                                temperature=0.8, top_k=None, top_p=0.95)

How it runs (all of it one jitted computation, with static shapes):

1. Prefill: the prompt goes through the model in one pass. For MEGABYTE the global model
   fills its KV cache with every complete patch of the prompt and the local model fills its
   cache with the bytes of the prompt's last, incomplete patch.
2. Decoding: a loop over patches (`lax.fori_loop`, or `lax.while_loop` when stop bytes may
   end it early). Each iteration runs P local-model steps (unrolled on accelerators), each
   sampling one byte, then the global model once, on the patch just completed. The local
   cache starts over at every patch; the global cache grows by one entry per patch. Every
   iteration has the same shape: when the prompt ends inside a patch, the first iteration
   re-feeds the prompt's bytes of that patch (recomputing what the prefill cached, at most
   P-1 local steps), and a generation that ends inside a patch runs on to the patch's end
   into a padding that is dropped.
3. The byte transformer decodes the same way, with one-byte "patches" and no global model.

Rows of a batch share the prompt length. With `slide=True` a generation may run past the
model's context: when the window is full it slides forward by half its length (a multiple of
the patch size) and the kept half is prefilled again, exactly as `sampling.sample_uncached`
slides, so greedy output of the two samplers agrees.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from megabyte_jax.errors import InputError
from megabyte_jax.inference.decoding import DecodeOptions, Decoder, decoder_for, unbox_params
from megabyte_jax.inference.sampling import check_sampling_options, sample_logits

__all__ = ["DecodeOptions", "cached_logits", "generate", "slide_step"]

STOPPED = -1  # value of the positions after a row's stop byte


def slide_step(seq_len: int, patch_size: int) -> int:
  """How far the context window moves when it is full: half of it, in whole patches."""
  return max(patch_size, (seq_len // 2) // patch_size * patch_size)


def _first_window_start(prompt_len: int, seq_len: int, patch_size: int) -> int:
  """Start of the first context window (0 unless the prompt alone fills the context)."""
  step, start = slide_step(seq_len, patch_size), 0
  while prompt_len - start >= seq_len:
    start += step
  return start


def _check_prompt(prompt: Any) -> np.ndarray:
  """Validates a prompt and returns it as int32 `[batch, L]` numpy."""
  if isinstance(prompt, str):
    raise InputError("prompt must be bytes or a [batch, length] array of byte ids, got a "
                     "str: encode it first, e.g. prompt.encode('utf-8')")
  if isinstance(prompt, (bytes, bytearray)):
    prompt = np.frombuffer(bytes(prompt), np.uint8)[None]
  array = np.asarray(prompt)
  if array.ndim != 2:
    raise InputError(f"prompt must be a [batch, length] array of byte ids, got shape "
                     f"{array.shape} (use prompt[None] for a single row)")
  if array.shape[0] == 0:
    raise InputError("prompt must hold at least one row (batch >= 1)")
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise InputError(f"prompt must hold integer byte ids 0..255, got dtype {array.dtype}")
  if array.size and (array.min() < 0 or array.max() > 255):
    bad = array[(array < 0) | (array > 255)]
    raise InputError(f"prompt bytes must be in 0..255; found {bad.size} value(s) outside, "
                     f"e.g. {bad.flat[0]}")
  return array.astype(np.int32)


def _check_options(options: Any) -> None:
  if not isinstance(options, DecodeOptions):
    raise InputError(f"options must be a DecodeOptions, got {type(options).__name__}")


def _check_stop_bytes(stop_bytes: Optional[Iterable[int]]) -> tuple[int, ...]:
  """Validates stop bytes; returns them as a sorted tuple (empty: no stop bytes)."""
  if stop_bytes is None:
    return ()
  if isinstance(stop_bytes, (bytes, bytearray)):
    stop_bytes = list(bytes(stop_bytes))
  if isinstance(stop_bytes, (int, np.integer)):
    stop_bytes = [stop_bytes]
  values = []
  for b in stop_bytes:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b <= 255:
      raise InputError(f"stop_bytes must be byte values 0..255, got {b!r}")
    values.append(int(b))
  return tuple(sorted(set(values)))


def _check_length(prompt_len: int, num_bytes: Any, seq_len: int, slide: bool) -> None:
  if isinstance(num_bytes, bool) or not isinstance(num_bytes, (int, np.integer)) \
      or num_bytes < 0:
    raise InputError(f"num_bytes must be an integer >= 0, got {num_bytes!r}")
  if not slide and prompt_len + num_bytes > seq_len:
    raise InputError(
        f"the prompt ({prompt_len} bytes) plus num_bytes={num_bytes} is "
        f"{prompt_len + num_bytes} bytes, more than the model's context of seq_len={seq_len} "
        f"bytes; pass slide=True (--slide on the command line) to let the context window "
        f"slide forward, or ask for fewer bytes")


def _decode(decoder: Decoder, params: Any, prompt: jax.Array, rng: jax.Array,
            forced: Optional[jax.Array], *, num_bytes: int, temperature: float,
            top_k: Optional[int], top_p: Optional[float], stop_bytes: tuple[int, ...],
            collect_logits: bool) -> tuple[jax.Array, Optional[jax.Array]]:
  """The decoding loop (traced under `jit`; shapes and options static).

  Returns `(bytes int32 [batch, L + num_bytes], logits [batch, num_bytes, 256] or None)`.
  With `forced [batch, num_bytes]` the given bytes are fed instead of sampled ones (teacher
  forcing, to check cached logits against the full forward pass).

  Every iteration of the loop covers one whole patch: P local steps, then the global step
  on the completed patch (or a slide of the window). With N > 2 levels the P bytes of a
  patch are nested loops over the middle levels' units, each starting with that level's
  step (`decoder.level_step`), so every level runs once per unit. The first iteration starts at the
  beginning of the patch the prompt ends in; its steps over prompt bytes are teacher-forced
  with those bytes and recompute exactly what the prefill cached, so that every iteration
  has the same shape. Steps past the requested end fill a padding that is cut off.
  """
  batch, prompt_len = prompt.shape
  psize, seq_len = decoder.patch_size, decoder.seq_len
  total = prompt_len + num_bytes
  start0 = _first_window_start(prompt_len, seq_len, psize)
  shift = slide_step(seq_len, psize)
  keep = seq_len - shift
  may_slide = total - start0 > seq_len
  stops = jnp.asarray(stop_bytes, jnp.int32) if stop_bytes else None
  first = prompt_len - (prompt_len - start0) % psize      # start of the prompt's last patch
  patches = -(-(total - first) // psize)
  padded = first + patches * psize                        # >= total

  out = jnp.concatenate(
      [prompt, jnp.full((batch, padded - prompt_len), STOPPED, jnp.int32)], axis=1)
  if forced is not None:    # the bytes to feed at positions first .. padded-1
    forced = jnp.concatenate([prompt[:, first:], forced.astype(jnp.int32),
                              jnp.zeros((batch, padded - total), jnp.int32)], axis=1)
  logits_buf = (jnp.zeros((batch, padded - first, 256), jnp.float32) if collect_logits
                else None)
  carry = (decoder.prefill(params, prompt[:, start0:]), out, jnp.zeros((batch,), bool),
           jnp.asarray(start0, jnp.int32), logits_buf)

  def step(n, carry):
    """Byte `n` (absolute position): sampled (or forced), or the prompt's own byte."""
    state, out, done, start, logits_buf = carry
    prev = jax.lax.dynamic_slice_in_dim(out, jnp.maximum(n - 1, 0), 1, axis=1)[:, 0]
    logits, state = decoder.step(params, state, n - start, jnp.maximum(prev, 0))
    if forced is not None:
      byte = jax.lax.dynamic_slice_in_dim(forced, n - first, 1, axis=1)[:, 0]
    else:
      key = jax.random.fold_in(rng, jnp.maximum(n - prompt_len, 0))
      byte = sample_logits(logits, key, temperature, top_k, top_p)
      known = jax.lax.dynamic_slice_in_dim(out, n, 1, axis=1)[:, 0]
      byte = jnp.where(n < prompt_len, known, byte)
    if stops is not None:
      byte = jnp.where(done, STOPPED, byte)
      hit = jnp.any(byte[:, None] == stops[None, :], axis=1)
      done = done | (hit & (n >= prompt_len) & (n < total))
    out = jax.lax.dynamic_update_slice(out, byte[:, None], (0, n))
    if logits_buf is not None:
      logits_buf = jax.lax.dynamic_update_slice(logits_buf, logits[:, None], (0, n - first, 0))
    return state, out, done, start, logits_buf

  def boundary(n, carry):
    """At `n`, the first byte of a new patch: run the global model on the completed patch,
    or, if the window is full, slide it and prefill the kept part again."""
    state, out, done, start, logits_buf = carry

    def advance(state, start):
      patch = jax.lax.dynamic_slice_in_dim(out, n - psize, psize, axis=1)
      return decoder.patch_step(params, state, n - start, jnp.maximum(patch, 0)), start

    def slide_window(state, start):
      del state
      start = start + shift
      window = jax.lax.dynamic_slice_in_dim(out, start, keep, axis=1)
      return decoder.prefill(params, jnp.maximum(window, 0)), start

    if may_slide:
      state, start = jax.lax.cond(n - start >= seq_len, slide_window, advance, state, start)
    else:
      state, start = advance(state, start)
    return state, out, done, start, logits_buf

  units = decoder.unit_sizes   # bytes per unit of each stepped level: (P,) for two levels

  def level_start(level, m, carry):
    """At `m`, the first byte of a unit of middle level `level`: run that level once (on the
    bytes of the unit before, or its pad at the first unit of a parent unit)."""
    state, out, done, start, logits_buf = carry
    size = units[level]
    unit = jax.lax.dynamic_slice_in_dim(out, jnp.maximum(m - size, 0), size, axis=1)
    state = decoder.level_step(level, params, state, m - start, jnp.maximum(unit, 0))
    return state, out, done, start, logits_buf

  def children(level, n, carry):
    """Bytes `n .. n + units[level-1] - 1`, one unit of level `level - 1`: each unit of
    `level` in turn (its own step first, then its children), down to one step per byte."""
    parent = units[level - 1]
    if level == len(units):
      return jax.lax.fori_loop(0, parent, lambda i, c: step(n + i, c), carry,
                               unroll=decoder.options.unroll_steps(parent))
    size = units[level]
    def unit(j, c):
      m = n + j * size
      return children(level + 1, m, level_start(level, m, c))
    return jax.lax.fori_loop(0, parent // size, unit, carry)

  def patch(j, carry):
    n = first + j * psize
    carry = children(1, n, carry)
    # After the last patch this prepares a patch that never comes: wasted, harmless.
    return boundary(n + psize, carry)

  if stops is None:
    carry = jax.lax.fori_loop(0, patches, patch, carry)
  else:   # stop early once every row has emitted a stop byte
    _, carry = jax.lax.while_loop(lambda jc: (jc[0] < patches) & ~jnp.all(jc[1][2]),
                                  lambda jc: (jc[0] + 1, patch(jc[0], jc[1])),
                                  (jnp.asarray(0, jnp.int32), carry))
  _, out, _, _, logits_buf = carry
  if logits_buf is not None:
    logits_buf = logits_buf[:, prompt_len - first:total - first]
  return out[:, :total], logits_buf


@functools.lru_cache(maxsize=64)
def _compiled(model_type: type, config: Any, num_bytes: int, temperature: float,
              top_k: Optional[int], top_p: Optional[float], stop_bytes: tuple[int, ...],
              teacher_forced: bool, options: DecodeOptions):
  """A jitted decoding function for one model config and one set of static options."""
  decoder = decoder_for(model_type(config), options)

  def run(params, prompt, rng, forced):
    params = decoder.prepare(params, prompt.shape[0])   # once, not once per byte
    return _decode(decoder, params, prompt, rng, forced, num_bytes=num_bytes,
                   temperature=temperature, top_k=top_k, top_p=top_p, stop_bytes=stop_bytes,
                   collect_logits=teacher_forced)

  return jax.jit(run)


def _as_key(rng: Any) -> jax.Array:
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.key(int(rng))
  return rng


def generate(model: nn.Module, variables: Any, prompt: Any, num_bytes: int, rng: Any,
             temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, *, stop_bytes: Optional[Sequence[int]] = None,
             slide: bool = False, options: DecodeOptions = DecodeOptions()) -> jax.Array:
  """Continues each row of `prompt` by `num_bytes` bytes, with KV-cached decoding.

  Args:
    model: a `Megabyte` or `ByteTransformer` module.
    variables: its variables (`{"params": ...}`, as `model.init` returns them).
    prompt: int byte ids `[batch, L]`, any `L >= 0` (also not a multiple of the patch
      size); every row has the same length. `bytes` are accepted as a single row.
    num_bytes: how many bytes to generate (>= 0).
    rng: a `jax.random.key` (or an int seed). Byte `t` of the continuation is drawn with
      `fold_in(rng, t)`, so a fixed key gives the same output.
    temperature: softmax temperature; 0 means greedy (argmax), ignoring top_k and top_p.
    top_k: sample only from the `top_k` most likely bytes (None: all 256).
    top_p: nucleus sampling, in (0, 1]: only from the smallest set of most likely bytes whose
      probability reaches `top_p` (None or 1: no limit).
    stop_bytes: optional byte values that end a row: the stop byte is kept, the row's later
      positions are set to -1 (never a byte, so the cut is unambiguous), and decoding ends
      as soon as every row has stopped.
    slide: allow `L + num_bytes` (or `L` alone) to exceed the model's `seq_len`: when the
      context is full the window slides forward by half its length, and later bytes see at
      least half a window of context. Without it such a request is refused.
    options: `DecodeOptions` (fused kernels, unrolling); the defaults pick the fastest
      path for the backend.

  Returns:
    int32 `[batch, L + num_bytes]`: the prompt followed by the generated bytes.

  Raises:
    InputError (a ValueError): a prompt that is not `[batch, L]` bytes 0..255, a negative
      `num_bytes`, a request longer than the context without `slide`, a temperature below
      0, `top_k` outside 1..256, `top_p` outside (0, 1], stop bytes outside 0..255, or a
      model other than `Megabyte`/`ByteTransformer`.
  """
  decoder_for(model)                                   # refuses other models early
  _check_options(options)
  prompt = _check_prompt(prompt)
  check_sampling_options(temperature, top_k, top_p)
  stops = _check_stop_bytes(stop_bytes)
  _check_length(prompt.shape[1], num_bytes, model.config.seq_len, slide)
  if num_bytes == 0:
    return jnp.asarray(prompt)
  run = _compiled(type(model), model.config, int(num_bytes), float(temperature),
                  None if top_k is None else int(top_k), None if top_p is None else float(top_p),
                  stops, False, options)
  out, _ = run(unbox_params(variables), jnp.asarray(prompt), _as_key(rng), None)
  return out


def cached_logits(model: nn.Module, variables: Any, tokens: Any, prompt_len: int,
                  options: DecodeOptions = DecodeOptions()) -> jax.Array:
  """Next-byte logits of `tokens[:, prompt_len:]` computed by the KV-cached decoder.

  The first `prompt_len` bytes are prefilled, the rest fed one at a time through the same
  loop `generate` runs (teacher forcing instead of sampling). The result should equal
  `model.apply(variables, tokens)[:, prompt_len:]` up to float rounding; the tests check it.

  Args:
    tokens: int byte ids `[batch, T]` with `T <= seq_len`.
    prompt_len: how many leading bytes to prefill (0..T-1).
    options: `DecodeOptions`, as for `generate`.

  Returns:
    float32 `[batch, T - prompt_len, 256]`.
  """
  _check_options(options)
  tokens = _check_prompt(tokens)
  length = tokens.shape[1]
  if not 0 <= prompt_len < length:
    raise InputError(f"prompt_len must be in 0..{length - 1}, got {prompt_len}")
  _check_length(prompt_len, length - prompt_len, model.config.seq_len, slide=False)
  run = _compiled(type(model), model.config, length - prompt_len, 0.0, None, None, (), True,
                  options)
  _, logits = run(unbox_params(variables), jnp.asarray(tokens[:, :prompt_len]),
                  jax.random.key(0), jnp.asarray(tokens[:, prompt_len:]))
  return logits
