"""KV-cached generation (exactness against the full forward pass, sampling options, errors),
strided evaluation, and the sample / evaluate / benchmark command lines."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, run_commands, run_module
from megabyte_jax import ByteTransformer, ConfigError, InputError, Megabyte, generate
from megabyte_jax.data import eval_windows
from megabyte_jax.inference.decoding import decoder_for, state_logical_axes
from megabyte_jax.inference.generation import cached_logits
from megabyte_jax.layers import CACHE_AXES, KVCache
from megabyte_jax.training.losses import byte_nll
from megabyte_jax.inference.sampling import sample_logits, sample_uncached
from megabyte_jax.inference.scoring import (evaluate_windows, make_eval_step, strided_spans,
                                  strided_windows)

P = 4  # patch size of the `megabyte_cfg` fixture (seq_len 32)


_INIT, _VARIABLES, _APPLY = {}, {}, {}


def _init(model, seed=0):
  """`model.init` on a [1, 32] batch: compiled once per model config (compiling it takes
  10+ s on a 2-core CPU, running it eagerly even longer) and cached per seed."""
  key = (model.config, seed)
  if key not in _VARIABLES:
    if model.config not in _INIT:
      _INIT[model.config] = jax.jit(model.init)
    _VARIABLES[key] = _INIT[model.config](jax.random.key(seed), jnp.zeros((1, 32), jnp.int32))
  return _VARIABLES[key]


def _apply(model, variables, tokens):
  """`model.apply`, jitted once per config."""
  if model.config not in _APPLY:
    _APPLY[model.config] = jax.jit(model.apply)
  return _APPLY[model.config](variables, jnp.asarray(tokens))


def _model(kind, megabyte_cfg, transformer_cfg, seed=0):
  model = Megabyte(megabyte_cfg) if kind == "megabyte" else ByteTransformer(transformer_cfg)
  return model, _init(model, seed)


def _greedy_reference(model, variables, prompt, num_bytes):
  """Greedy decoding by rerunning the full forward pass on the whole text for every byte."""
  apply = lambda variables, window: _apply(model, variables, window)
  text = np.asarray(prompt, np.int32)
  for _ in range(num_bytes):
    window = np.zeros((text.shape[0], model.config.seq_len), np.int32)
    window[:, :text.shape[1]] = text
    logits = apply(variables, jnp.asarray(window))[:, text.shape[1]]
    text = np.concatenate([text, np.asarray(jnp.argmax(logits, -1), np.int32)[:, None]], 1)
  return text


def _prompt(batch, length, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
@pytest.mark.parametrize("length", [0, 1, P - 1, P, P + 1, 2 * P + 3])
def test_greedy_equals_full_forward_argmax(kind, length, megabyte_cfg, transformer_cfg):
  """Byte for byte, for prompts that start, end inside and end on patch boundaries; the
  generation crosses several boundaries and ends inside a patch."""
  model, variables = _model(kind, megabyte_cfg, transformer_cfg)
  prompt = _prompt(2, length, seed=length)
  num_bytes = 2 * P + 3 if length else 3 * P + 1
  out = generate(model, variables, prompt, num_bytes, jax.random.key(0), temperature=0.0)
  assert out.shape == (2, length + num_bytes) and out.dtype == jnp.int32
  expected = _greedy_reference(model, variables, prompt, num_bytes)
  np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
@pytest.mark.parametrize("prompt_len", [0, P + 1])
def test_cached_logits_match_full_forward(kind, prompt_len, megabyte_cfg, transformer_cfg):
  """Prefill plus one-byte steps reproduce the full forward pass's logits in float32."""
  model, variables = _model(kind, megabyte_cfg, transformer_cfg, seed=3)
  tokens = _prompt(2, 32, seed=7)
  full = np.asarray(_apply(model, variables, tokens))[:, prompt_len:]
  cached = np.asarray(cached_logits(model, variables, tokens, prompt_len))
  assert cached.shape == full.shape
  np.testing.assert_allclose(cached, full, rtol=1e-5, atol=2e-5)


def test_cached_logits_bfloat16_are_close(megabyte_cfg):
  """In bf16 the cached path is close to the full forward pass (not exact)."""
  cfg = megabyte_cfg.replace(dtype="bfloat16")
  model = Megabyte(cfg)
  variables = _init(Megabyte(megabyte_cfg))     # float32 parameters either way
  tokens = _prompt(1, 8, seed=1)
  full = np.asarray(_apply(model, variables, tokens))[:, 5:]
  cached = np.asarray(cached_logits(model, variables, tokens, 5))
  assert np.abs(cached - full).max() < 0.1


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_the_parameters_decoding_reads_change_no_logit(kind, megabyte_cfg, transformer_cfg):
  """`Decoder.prepare` folds every block's norms into its kernels and casts the kernels to
  bf16 once; the blocks fold and cast at every use, rounding once, so the bf16 forward pass
  gives bit-identical logits from either parameter tree. Norm scales become ones, and
  nothing outside the blocks' kernels is cast."""
  model, variables = _model(kind, megabyte_cfg, transformer_cfg, seed=2)
  params = nn.meta.unbox(variables)["params"]
  leaves = jax.tree_util.tree_leaves(params)   # non-trivial norms, so that folding matters
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), [
      a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])
  bf16 = type(model)(model.config.replace(dtype="bfloat16"))
  prepared = decoder_for(bf16).prepare(params, 2)
  changed = {jax.tree_util.keystr(path) for path, leaf in
             jax.tree_util.tree_leaves_with_path(prepared) if leaf.dtype == jnp.bfloat16}
  assert changed and all("_kernel" in p for p in changed)
  assert not any("head" in p or "embed" in p for p in changed)
  stack = prepared["local_model" if kind == "megabyte" else "model"]["block_0"]
  np.testing.assert_array_equal(np.asarray(stack["attn_norm"]["scale"]), 1.0)
  tokens = _prompt(2, 32, seed=4)
  apply = jax.jit(bf16.apply)   # compiled, as training and decoding run it
  np.testing.assert_array_equal(np.asarray(apply({"params": prepared}, tokens)),
                                np.asarray(apply({"params": params}, tokens)))


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_sampling_is_reproducible_and_top_k_1_is_greedy(kind, megabyte_cfg, transformer_cfg):
  model, variables = _model(kind, megabyte_cfg, transformer_cfg)
  prompt = _prompt(2, P + 1)              # the shapes of a greedy test above: shared compile
  n = 2 * P + 3
  a = generate(model, variables, prompt, n, jax.random.key(5))
  b = generate(model, variables, prompt, n, jax.random.key(5))
  c = generate(model, variables, prompt, n, jax.random.key(6))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  assert np.all(np.asarray(a) >= 0) and np.all(np.asarray(a) <= 255)
  greedy = generate(model, variables, prompt, n, jax.random.key(0), temperature=0.0)
  top1 = generate(model, variables, prompt, n, jax.random.key(9), top_k=1)
  nucleus = generate(model, variables, prompt, n, jax.random.key(9), top_p=1e-6)
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))
  np.testing.assert_array_equal(np.asarray(nucleus), np.asarray(greedy))


def test_sampling_matches_the_uncached_sampler(megabyte_cfg):
  """Same key, same draws: the cached and the plain sampler give the same bytes (batch 1)."""
  model, variables = _model("megabyte", megabyte_cfg, None)
  prompt = np.frombuffer(b"def f(", np.uint8)
  plain = sample_uncached(model, variables, prompt, 10, jax.random.key(3), temperature=1.0,
                          top_k=40)
  cached = generate(model, variables, prompt[None], 10, jax.random.key(3), top_k=40)
  np.testing.assert_array_equal(np.asarray(cached)[0], plain)


def test_sliding_window_matches_the_uncached_sampler(megabyte_cfg, transformer_cfg):
  """With slide=True generation runs past seq_len (and prompts longer than it are accepted);
  greedy output equals the plain sampler, which slides the same way."""
  for model, variables in (_model("megabyte", megabyte_cfg, None),
                           _model("transformer", None, transformer_cfg)):
    prompt = _prompt(1, 37, seed=2)[0]                   # longer than seq_len = 32
    plain = sample_uncached(model, variables, prompt, 30, jax.random.key(0), temperature=0.0)
    cached = generate(model, variables, prompt[None], 30, jax.random.key(0), temperature=0.0,
                      slide=True)
    np.testing.assert_array_equal(np.asarray(cached)[0], plain)


def test_top_p_filters_the_tail():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  draws = {int(sample_logits(logits, jax.random.key(i), top_p=0.7)[0]) for i in range(60)}
  assert draws == {0, 1}                       # 0.5 < 0.7 needs the second byte, not the third
  draws = {int(sample_logits(logits, jax.random.key(i), top_p=0.81)[0]) for i in range(80)}
  assert draws == {0, 1, 2}
  draws = {int(sample_logits(logits, jax.random.key(i), top_p=1.0)[0]) for i in range(200)}
  assert draws == {0, 1, 2, 3}


def test_stop_bytes_end_rows_independently(megabyte_cfg):
  model, variables = _model("megabyte", megabyte_cfg, None)
  prompt = _prompt(2, P - 1, seed=4)
  greedy = np.asarray(generate(model, variables, prompt, 2 * P + 3, jax.random.key(0),
                               temperature=0.0))
  row0 = greedy[0, 3:]
  stop = int(row0[4])                           # a byte row 0 emits at its 5th step
  first = 3 + int(np.argmax(row0 == stop))
  out = np.asarray(generate(model, variables, prompt, 2 * P + 3, jax.random.key(0),
                            temperature=0.0, stop_bytes=[stop]))
  np.testing.assert_array_equal(out[0, :first + 1], greedy[0, :first + 1])
  assert np.all(out[0, first + 1:] == -1)
  hits = np.flatnonzero(greedy[1, 3:] == stop)
  end1 = 3 + hits[0] + 1 if hits.size else greedy.shape[1]
  np.testing.assert_array_equal(out[1, :end1], greedy[1, :end1])
  assert np.all(out[1, end1:] == -1)


def test_stop_bytes_in_the_prompt_never_end_a_row(megabyte_cfg):
  """Only generated bytes end a row: a stop byte in the prompt's last, partial patch (row 0:
  b"abcd\\nxy" with P = 4) or in an earlier, whole patch (row 1) leaves the prompt as it is
  and generation goes on, up to the first generated stop byte."""
  model, variables = _model("megabyte", megabyte_cfg, None)
  prompt = np.frombuffer(b"abcd\nxya\ncdefg", np.uint8).reshape(2, 7).astype(np.int32)
  greedy = np.asarray(generate(model, variables, prompt, 2 * P + 3, jax.random.key(0),
                               temperature=0.0))
  out = np.asarray(generate(model, variables, prompt, 2 * P + 3, jax.random.key(0),
                            temperature=0.0, stop_bytes=b"\n"))
  np.testing.assert_array_equal(out[:, :7], prompt)
  for row in range(2):
    hits = np.flatnonzero(greedy[row, 7:] == 10)
    end = 7 + hits[0] + 1 if hits.size else greedy.shape[1]
    np.testing.assert_array_equal(out[row, :end], greedy[row, :end], err_msg=f"row {row}")
    assert np.all(out[row, end:] == -1), row


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
    (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
    (dict(top_p=-0.2), "top_p"),
    (dict(top_k=0), "top_k must be an integer in 1..256"),
    (dict(temperature=-1.0), "temperature must be"),
    (dict(stop_bytes=[256]), "stop_bytes must be byte values"),
    (dict(num_bytes=-1), "num_bytes must be an integer >= 0"),
    (dict(num_bytes=30), "more than the model's context of seq_len=32"),
    (dict(prompt=np.array([[1, 300]])), "prompt bytes must be in 0..255"),
    (dict(prompt=np.array([1, 2])), "prompt must be a \\[batch, length\\] array"),
    (dict(prompt="hello"), "got a str: encode it first"),
])
def test_bad_requests_are_refused_clearly(kwargs, message, megabyte_cfg):
  model, variables = _model("megabyte", megabyte_cfg, None)
  args = dict(prompt=_prompt(1, 5), num_bytes=4)
  args.update(kwargs)
  with pytest.raises(InputError, match=message):
    generate(model, variables, args.pop("prompt"), args.pop("num_bytes"), jax.random.key(0),
             **args)
  assert issubclass(InputError, ValueError)


def test_prompt_longer_than_context_is_refused_without_slide(megabyte_cfg):
  model, variables = _model("megabyte", megabyte_cfg, None)
  with pytest.raises(InputError, match="slide=True"):
    generate(model, variables, _prompt(1, 40), 1, jax.random.key(0))
  out = generate(model, variables, _prompt(1, 5), 0, jax.random.key(0))   # nothing to add
  np.testing.assert_array_equal(np.asarray(out), _prompt(1, 5))


def test_other_models_are_refused():
  with pytest.raises(InputError, match="supports Megabyte and ByteTransformer"):
    generate(nn.Dense(3), {}, np.zeros((1, 1), np.int32), 1, jax.random.key(0))


def test_caches_carry_logical_axis_names(megabyte_cfg):
  decoder = decoder_for(Megabyte(megabyte_cfg))
  state = decoder.init_state(2)
  axes = state_logical_axes(state)
  assert tuple(axes["global_cache"][0].k) == CACHE_AXES
  assert tuple(axes["local_cache"][1].v) == CACHE_AXES
  assert tuple(axes["g"]) == ("cache_batch", None, None)
  assert len(jax.tree_util.tree_leaves(state)) == len(jax.tree_util.tree_leaves(axes))
  cache = state["global_cache"][0]
  assert isinstance(cache, KVCache)
  # [batch, patches, heads, head_dim] for the global model, [batch, P, ...] for the local one.
  assert cache.k.shape == (2, megabyte_cfg.num_patches, 2, 16)
  assert state["local_cache"][0].k.shape == (2, P, 2, 8)


# --- Strided evaluation -------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 40, 100, 129])
@pytest.mark.parametrize("stride", [4, 8, 28, 32])
def test_strided_spans_score_every_byte_exactly_once(length, stride):
  counts = np.zeros(length, int)
  spans = strided_spans(length, 32, stride)
  for i, (start, first, end) in enumerate(spans):
    assert start <= first < end <= min(start + 32, length)
    assert start % stride == 0
    if i:                                   # later windows score (at most) their last bytes
      assert end - first <= stride and first - start == 32 - stride
    counts[first:end] += 1
  np.testing.assert_array_equal(counts, np.ones(length, int))


def test_stride_equal_to_seq_len_gives_the_plain_windows():
  docs = [np.arange(n, dtype=np.uint8) for n in (5, 32, 70)]
  plain, strided = eval_windows(docs, 32), strided_windows(docs, 32, 32, 4)
  np.testing.assert_array_equal(plain.tokens, strided.tokens)
  np.testing.assert_array_equal(plain.mask, strided.mask)
  many = strided_windows(docs, 32, 8, 4)
  assert many.num_bytes == plain.num_bytes == 107 and len(many.tokens) > len(plain.tokens)


@pytest.mark.parametrize("stride, message", [(6, "multiple of the patch size 4"),
                                             (64, "at most the model's seq_len=32"),
                                             (0, "positive integer")])
def test_bad_strides_are_refused(stride, message):
  with pytest.raises(ConfigError, match=message):
    strided_windows([np.zeros(10, np.uint8)], 32, stride, 4)


def _periodic_doc(rng, length=96, period=8):
  """Random letters a..p repeating every `period`: predictable only from earlier context."""
  block = rng.integers(0, 16, period, dtype=np.uint8) + ord("a")
  return np.tile(block, length // period + 1)[:length]


def test_strided_evaluation_uses_the_longer_context(megabyte_cfg):
  """A tiny model trained to copy from 8 bytes back (it learns that in ~200 steps): plain
  windows cut the context at every window start (about 1 bit/byte), strided windows keep it
  (about 1/3); both score exactly the same bytes."""
  model = Megabyte(megabyte_cfg)
  params = nn.meta.unbox(_init(model)["params"])
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, tokens):
    loss = lambda p: byte_nll(model.apply({"params": p}, tokens), tokens).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(0)
  for _ in range(400):
    docs = [_periodic_doc(rng) for _ in range(16)]
    starts = rng.integers(0, 96 - 32 + 1, 16)
    tokens = np.stack([d[s:s + 32] for d, s in zip(docs, starts)]).astype(np.int32)
    params, opt_state = train_step(params, opt_state, jnp.asarray(tokens))
  test = [_periodic_doc(np.random.default_rng(100 + i)) for i in range(8)]
  step = make_eval_step(model)
  plain = evaluate_windows(step, params, eval_windows(test, 32), 8)
  strided = evaluate_windows(step, params, strided_windows(test, 32, 8, P), 8)
  assert plain["bytes"] == strided["bytes"] == 8 * 96
  assert strided["bpb"] < plain["bpb"] - 0.3, (plain, strided)


# --- Command-line tools -------------------------------------------------------------------

TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")




_TINY_STATE = []


def _write_run(workdir, **data):
  """A work directory as training leaves it (config.json, a checkpoint of step 4) for a tiny,
  untrained MEGABYTE (seq_len 64, P 8) with the given `config.data` fields.

  Written in-process with the training code's own functions, which is much faster than a
  training run (tests/test_cli.py covers that one)."""
  from megabyte_jax.training.checkpoint import Checkpointer
  from megabyte_jax.experiment import base_config
  from megabyte_jax.models import build_model
  from megabyte_jax.training.train_state import create_train_state, make_optimizer
  from megabyte_jax.training.workdir import save_config
  config = base_config("megabyte", seq_len=64, patch_size=8, global_dim=64, global_layers=1,
                       global_heads=2, local_dim=32, local_layers=1, local_heads=2)
  config.eval.batch_size = 8
  for key, value in data.items():
    config.data[key] = value
  save_config(workdir, config)
  if not _TINY_STATE:      # the same model every time: create (and compile) it once
    model, model_cfg = build_model(config.model)
    _TINY_STATE.append(create_train_state(model, model_cfg.seq_len,
                                          make_optimizer(config.train), jax.random.key(0)))
  state = _TINY_STATE[0]
  checkpointer = Checkpointer(workdir, save_every=1, keep=1)
  checkpointer.save(4, state, force=True)
  checkpointer.close()
  return workdir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A tiny model's work directory on a small real corpus; returns (workdir, corpus)."""
  base = tmp_path_factory.mktemp("generate_cli")
  corpus = base / "corpus"
  shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], "json"), corpus,
                  ignore=shutil.ignore_patterns("__pycache__"))
  return _write_run(str(base / "run"), files=str(corpus), eval_fraction=0.4), str(corpus)


# The sample command's mistakes on the tiny run: its arguments and the message it must give.
SAMPLE_ERRORS = (
    (["--num_bytes=100"], "more than the model's context of seq_len=64"),
    (["--top_p=1.5"], "top_p must be in (0, 1]"),
    (["--output=picture.png"], "PNG output needs a model trained on images"),
    (["--prompt_file=/nonexistent/prompt"], "cannot read --prompt_file"),
)
# The evaluate commands of `test_evaluate_cli_stride_scores_the_same_bytes`, by name.
EVALUATE_RUNS = (("plain", []), ("strided", ["--stride=16"]), ("bad", ["--stride=12"]),
                 ("paper", ["--strided"]), ("both", ["--strided", "--stride=16"]))


@pytest.fixture(scope="module")
def cli_results(tiny_run, tmp_path_factory):
  """The sample and evaluate commands of the tests below on the tiny run, in one process as
  their console scripts would run; returns `(results by name, the --output file)`."""
  workdir, _ = tiny_run
  tmp = tmp_path_factory.mktemp("generate_commands")
  target, prompt_file = tmp / "out.bin", tmp / "prompt.txt"
  prompt_file.write_bytes(b"import ")
  named = [("printed", "megabyte_jax.sample", ["--prompt=import ", "--num_bytes=20",
                                               "--temperature=0"]),
           # Past the model's seq_len of 64 with --slide; greedy, so the first 20 bytes are
           # the same.
           ("written", "megabyte_jax.sample", [f"--prompt_file={prompt_file}", "--num_bytes=70",
                                               "--temperature=0", "--slide",
                                               f"--output={target}", "--step=4"])]
  named += [(f"error{i}", "megabyte_jax.sample", args) for i, (args, _) in
            enumerate(SAMPLE_ERRORS)]
  named += [(name, "megabyte_jax.evaluate", args) for name, args in EVALUATE_RUNS]
  results = run_commands(*[(module, [f"--workdir={workdir}", *args])
                           for _, module, args in named])
  return dict(zip([name for name, _, _ in named], results)), target


def test_sample_cli_prints_and_writes_a_continuation(cli_results):
  results, target = cli_results
  printed = results["printed"]["stdout"]
  assert results["printed"]["code"] == 0 and results["written"]["code"] == 0, results
  assert printed.startswith("import ") and "Traceback" not in results["printed"]["stderr"]
  data = target.read_bytes()
  assert len(data) == 77 and data.startswith(b"import ")
  assert data[:27].decode("utf-8", errors="replace") == printed[:-1]   # printed + "\n"


@pytest.mark.parametrize("args, message", SAMPLE_ERRORS)
def test_sample_cli_errors_are_one_clear_line(args, message, cli_results):
  result = cli_results[0][f"error{SAMPLE_ERRORS.index((args, message))}"]
  assert result["code"] != 0 and message in result["stderr"], result
  assert "Traceback" not in result["stderr"]


@pytest.mark.parametrize("order", ["raster", "patch"])
def test_sample_cli_writes_a_png_for_an_image_model(order, tmp_path):
  """A model of 8x8 grayscale images (64 bytes, its seq_len) writes `--output=*.png` as an
  image, in raster or patch-scan order (data.patch_size=4: 2x2 pixel blocks), and by
  default generates what completes the image."""
  from PIL import Image
  extra = dict(patch_size=4) if order == "patch" else {}
  workdir = _write_run(str(tmp_path / "run"), name="image_folder", files=str(tmp_path),
                       image_size=8, channels=1, order=order, **extra)
  target = tmp_path / "out.png"
  proc = run_module("megabyte_jax.sample", f"--workdir={workdir}", "--prompt=", f"--output={target}")
  assert "wrote a 8x8 image" in proc.stderr
  with Image.open(target) as image:
    assert image.size == (8, 8) and image.mode == "L"


def test_evaluate_cli_stride_scores_the_same_bytes(cli_results):
  results = cli_results[0]
  plain, strided = (json.loads(results[n]["stdout"]) for n in ("plain", "strided"))
  assert strided["bytes"] == plain["bytes"] and strided["stride"] == 16
  assert 0 < strided["bpb"] < 9
  bad = results["bad"]
  assert bad["code"] != 0 and "multiple of the patch size 8" in bad["stderr"]
  assert "Traceback" not in bad["stderr"]
  # The paper's strided inference: two passes, the same bytes, each once.
  paper = json.loads(results["paper"]["stdout"])
  assert paper["bytes"] == plain["bytes"] and paper["strided"] is True
  assert paper["windows"] >= 2 * plain["files"] and 0 < paper["bpb"] < 9
  both = results["both"]
  assert both["code"] != 0 and "choose one" in both["stderr"]


def test_generate_benchmark_runs_on_cpu():
  """The benchmark script's tiny preset: JSON lines for both models and both samplers."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "bench", "generate_bench.py"),
       "--preset=tiny", "--batch_sizes=2", "--num_bytes=16", "--uncached_bytes=4",
       "--repeats=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  records = [json.loads(line) for line in proc.stdout.splitlines()]
  timed = [(r["model"], r["sampler"], r["batch"]) for r in records if r["what"] == "generate"]
  assert set(timed) == {(m, s, b) for m in ("megabyte", "transformer")
                        for s, b in (("kv_cached", 2), ("uncached", 1))}
  assert all(r["bytes_per_s"] > 0 for r in records if r["what"] == "generate")
