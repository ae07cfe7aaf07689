"""The paper's variants and deeper hierarchies (issue 10): the convolutional patch encoder,
cross-patch attention, 3- and 4-level models. For each: no hidden leak (changing byte t never
moves a prediction of bytes <= t), parameters counted by `flops`, KV-cached logits equal to
the full forward pass, greedy generation equal to the full-forward argmax. Plus the pieces:
config validation, rotary embeddings, the conv encoder, the cross-patch cache."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megabyte_jax import ConfigError, Megabyte, MegabyteConfig, generate
from megabyte_jax.config import PAPER_FORMULATION
from megabyte_jax.inference.decoding import decoder_for, state_logical_axes
from megabyte_jax.flops import model_cost
from megabyte_jax.inference.generation import cached_logits
from megabyte_jax.layers import (CausalConvEncoder, KVCache, Mode, StackSpec, TransformerStack,
                                 apply_rotary, cross_patch_cache_len, init_stack_cache)
from megabyte_jax.layers.attention import _cross_patch_attention, _cross_patch_mask
from megabyte_jax.models.levels import level_specs, model_stacks
from megabyte_jax.models.megabyte import conv_encoder
from megabyte_jax.inference.sampling import sample_uncached

T = 32
BASE = MegabyteConfig(seq_len=T, patch_size=4, global_dim=32, global_layers=2, global_heads=2,
                      local_dim=16, local_layers=2, local_heads=2)
VARIANTS = {
    "conv": BASE.replace(conv_kernel_sizes=(3, 5, 7)),
    "cross_patch": BASE.replace(cross_patch=2),
    # 3 levels: global patches of 8 bytes, 2 middle units of 4 bytes each, local over 4.
    "three_level": BASE.replace(patch_size=8, patch_sizes=(2, 4), mid_dims=(16,),
                                mid_layers=(1,), mid_heads=(2,)),
    # 4 levels, with every other switch on too (and stacked layers).
    "four_level": BASE.replace(patch_size=8, patch_sizes=(2, 2, 2), mid_dims=(16, 8),
                               mid_layers=(1, 1), mid_heads=(2, 2), cross_patch=1,
                               conv_kernel_sizes=(3,), scan_layers=True, tie_embeddings=True),
}
# The paper's own formulation (`config.PAPER_FORMULATION`), with two levels and with every
# switch on: sliced projections, concatenated embeddings, a pad at every patch start.
PAPER = BASE.replace(**PAPER_FORMULATION)
VARIANTS["paper"] = PAPER
VARIANTS["four_level_paper"] = VARIANTS["four_level"].replace(**PAPER_FORMULATION)

_VARIABLES, _APPLY = {}, {}


def _variables(cfg):
  if cfg not in _VARIABLES:
    _VARIABLES[cfg] = jax.jit(Megabyte(cfg).init)(jax.random.key(3), jnp.zeros((1, T), jnp.int32))
  return _VARIABLES[cfg]


def _apply(cfg, variables, tokens):
  if cfg not in _APPLY:
    _APPLY[cfg] = jax.jit(Megabyte(cfg).apply)
  return np.asarray(_APPLY[cfg](variables, jnp.asarray(tokens)))


def _tokens(batch, length, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_no_hidden_leak(name):
  """Changing byte t never moves the logits of positions <= t (every t of the window, so
  every patch and unit boundary of every level), and always moves a later one."""
  cfg = VARIANTS[name]
  variables = _variables(cfg)
  tokens = _tokens(2, T)
  before = _apply(cfg, variables, tokens)
  for t in range(T):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % 256
    after = _apply(cfg, variables, changed)
    np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1], err_msg=f"t={t}")
    if t + 1 < T:
      assert np.abs(before[:, t + 1:] - after[:, t + 1:]).max() > 1e-6, t


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameter_count_matches_flops(name):
  cfg = VARIANTS[name]
  shapes = jax.eval_shape(Megabyte(cfg).init, jax.random.key(0), jnp.zeros((1, T), jnp.int32))
  count = sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
  assert model_cost(cfg).params == count


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_parameter_has_logical_axis_names(name):
  shapes = jax.eval_shape(Megabyte(VARIANTS[name]).init, jax.random.key(0),
                          jnp.zeros((1, T), jnp.int32))
  leaves = jax.tree_util.tree_leaves(shapes["params"],
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_logits_match_full_forward(name):
  """The KV-cached decoder (prefill + one-byte steps + every level's steps) reproduces the
  full forward pass in float32, from an empty prompt and from one ending inside a patch."""
  cfg = VARIANTS[name]
  variables = _variables(cfg)
  tokens = _tokens(2, T, seed=7)
  full = _apply(cfg, variables, tokens)
  for prompt_len in (0, 13):
    cached = np.asarray(cached_logits(Megabyte(cfg), variables, tokens, prompt_len))
    np.testing.assert_allclose(cached, full[:, prompt_len:], rtol=1e-5, atol=2e-5,
                               err_msg=f"prompt_len={prompt_len}")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_greedy_generation_equals_full_forward_argmax(name):
  cfg = VARIANTS[name]
  variables = _variables(cfg)
  prompt = _tokens(2, 5, seed=1)
  num_bytes = T - 5 - 2
  out = np.asarray(generate(Megabyte(cfg), variables, prompt, num_bytes, jax.random.key(0),
                            temperature=0.0))
  text = prompt
  for _ in range(num_bytes):
    window = np.zeros((2, T), np.int32)
    window[:, :text.shape[1]] = text
    nxt = _apply(cfg, variables, window)[:, text.shape[1]].argmax(-1).astype(np.int32)
    text = np.concatenate([text, nxt[:, None]], axis=1)
  np.testing.assert_array_equal(out, text)


def test_sliding_generation_matches_the_uncached_sampler():
  """Past seq_len the window slides and is prefilled again (every level, the conv history
  and the cross-patch cache): greedy output equals the plain sampler's."""
  cfg = VARIANTS["four_level"]
  variables = _variables(cfg)
  model = Megabyte(cfg)
  prompt = _tokens(1, 3, seed=2)
  out = np.asarray(generate(model, variables, prompt, 2 * T, jax.random.key(0),
                            temperature=0.0, slide=True))[0]
  expected = sample_uncached(model, variables, prompt[0], 2 * T, jax.random.key(0),
                             temperature=0.0)
  np.testing.assert_array_equal(out, expected)


def test_cross_patch_attention_sees_the_previous_patch():
  """With the global model's contribution zeroed, plain local models see only their own
  patch; with cross-patch attention patch k also sees the last r positions of patch k-1,
  and through them (one patch further per layer) a few patches back, never more."""
  tokens = _tokens(1, T)
  changed = tokens.copy()
  changed[0, 6] += 1                        # the local input of position 7, in patch 1
  for r, moves in ((0, False), (2, True)):
    cfg = PAPER.replace(cross_patch=r)
    params = nn.meta.unbox(_variables(cfg))["params"]
    params = {**params, "global_to_local": jnp.zeros_like(params["global_to_local"])}
    before = _apply(cfg, {"params": params}, tokens)
    after = _apply(cfg, {"params": params}, changed)
    assert (np.abs(before[0, 8:12] - after[0, 8:12]).max() > 1e-6) == moves, r
    # 2 local layers reach back 2 patches: patches 2 and 3 may move, patch 4 on may not.
    np.testing.assert_array_equal(before[0, 16:], after[0, 16:])


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_cross_patch_keys_are_exactly_the_last_r_of_the_previous_patch(r):
  """Query q of the patch starting at `start` sees keys `max(0, start - r) .. q` and no
  other: for the first query of every patch k >= 1, exactly start-r .. start-1 and itself,
  never start-r-1. Checked on the mask and on the attention weights it gives: with zero
  queries and keys the weights are uniform over the visible keys, and one-hot values
  `v[k] = e_k` make each output row those weights."""
  patch, n = 4, 16
  visible = np.zeros((n, n), bool)                       # [query, key]
  for q in range(n):
    start = q - q % patch
    visible[q, max(0, start - r):q + 1] = True
  pos = jnp.arange(n, dtype=jnp.int32)
  np.testing.assert_array_equal(np.asarray(_cross_patch_mask(pos, pos, patch, r)), visible)
  for start in range(patch, n, patch):                   # the wording, spelt out
    assert set(np.flatnonzero(visible[start])) == set(range(start - r, start + 1))
  zeros = jnp.zeros((1, n, 1, n), jnp.float32)           # [batch, T, heads, head_dim]
  one_hot = jnp.eye(n, dtype=jnp.float32)[None, :, None, :]
  attend = jax.jit(_cross_patch_attention, static_argnums=(3, 4))
  weights = np.asarray(attend(zeros, zeros, one_hot, patch, r))[0, :, 0]
  np.testing.assert_allclose(weights, visible / visible.sum(1, keepdims=True), atol=1e-6)


def test_paper_parameter_tree_is_unchanged():
  """The paper's formulation: its 2-level parameter names and shapes, no extra entries
  (the tree of every checkpoint written before 2026-12)."""
  params = nn.meta.unbox(_variables(PAPER))["params"]
  assert set(params) == {"global_embed", "global_pos", "global_pad", "global_model",
                         "global_to_local", "local_embed", "local_pad", "local_pos",
                         "local_model", "head"}
  assert params["global_to_local"].shape == (8, 16)
  assert params["global_embed"]["embedding"].shape == (256, 8)      # D_G = 32 / 4
  spelt_out = BASE.replace(patch_sizes=(4,))          # the 2-level model written as a list
  assert spelt_out == BASE and spelt_out.levels == 2


def test_default_parameter_tree():
  """The defaults add the patch projection (`patch_embed="linear"`: byte embeddings of
  `local_dim`, LayerNorm, dense, LayerNorm), project the whole global output once per
  local position (`global_to_local="full"`) and have no position tables (rotary)."""
  params = nn.meta.unbox(_variables(BASE))["params"]
  assert set(params) == {"global_embed", "global_pad", "global_model",
                         "patch_embed", "global_to_local", "local_embed", "local_pad",
                         "local_model", "head"}
  assert params["global_embed"]["embedding"].shape == (256, 16)     # local_dim
  learned = nn.meta.unbox(_variables(BASE.replace(positions="learned")))["params"]
  assert learned["global_pos"].shape == (T, 16) and learned["local_pos"].shape == (4, 16)
  assert params["patch_embed"]["proj"]["kernel"].shape == (4 * 16, 32)
  assert params["patch_embed"]["in_norm"]["scale"].shape == (4 * 16,)
  assert params["patch_embed"]["out_norm"]["scale"].shape == (32,)
  assert params["global_to_local"].shape == (32, 4, 16)             # [global, P, local]


@pytest.mark.parametrize("paper", [True, False])
def test_deeper_hierarchy_parameter_names_and_shapes(paper):
  cfg = VARIANTS["three_level"]
  cfg = cfg.replace(**PAPER_FORMULATION) if paper else cfg
  params = jax.eval_shape(Megabyte(cfg).init, jax.random.key(0),
                          jnp.zeros((1, T), jnp.int32))["params"]
  params = nn.meta.unbox(params)
  if paper:
    assert params["global_embed"]["embedding"].shape == (256, 4)    # 32 / 8 bytes
    assert params["global_to_level_1"].shape == (16, 16)            # 32 / 2 slices -> 16
    assert params["level_1_to_local"].shape == (4, 16)              # 16 / 4 slices -> 16
  else:
    assert params["global_embed"]["embedding"].shape == (256, 16)   # local_dim
    assert params["global_to_level_1"].shape == (32, 2, 16)         # [32, 2 units, 16]
    assert params["level_1_to_local"].shape == (16, 4, 16)          # [16, 4 bytes, 16]
  assert params["level_1_embed"]["embedding"].shape == (256, 4)     # 16 / 4 bytes per unit
  if paper:                                      # learned positions; the default: rotary
    assert params["level_1_pos"].shape == (2, 16)
    assert params["local_pos"].shape == (4, 16)
  else:
    assert not any(name.endswith("_pos") for name in params)
  assert set(params["level_1_model"]) == {"block_0", "final_norm"}


def test_level_specs():
  cfg = VARIANTS["four_level"]
  levels = level_specs(cfg)
  assert [l.name for l in levels] == ["global", "level_1", "level_2", "local"]
  assert [l.parent for l in levels] == [None, "global", "level_1", "level_2"]
  assert [l.width for l in levels] == [32, 16, 8, 16] == [l.stack.dim for l in levels]
  assert [l.unit for l in levels] == [8, 4, 2, 1] and [l.patch for l in levels[1:]] == [2, 2, 2]
  assert levels[0].patch == cfg.num_patches and levels[-1].is_bytes
  assert levels[2].stack.heads == 2 and levels[0].stack.heads == cfg.global_heads
  assert levels[-1].stack.cross_patch == 1 and levels[-1].stack.patch == 2
  assert levels[0].stack.cross_patch == 0 and levels[1].stack.cross_patch == 0
  assert list(model_stacks(cfg)) == ["global_model", "level_1_model", "level_2_model",
                                     "local_model"]
  params = nn.meta.unbox(_variables(cfg))["params"]    # the model's own parameter names
  assert set(model_stacks(cfg)) <= set(params)
  assert {f"{l.parent}_to_{l.name}" for l in levels[1:]} <= set(params)
  assert cfg.levels == 4 and cfg.unit_sizes == (8, 4, 2, 1) and cfg.local_patch_size == 2
  assert cfg.level_patch_sizes == (2, 2, 2) and BASE.level_patch_sizes == (4,)
  assert BASE.unit_sizes == (4, 1) and BASE.levels == 2
  encoder = conv_encoder(VARIANTS["conv"])
  assert encoder.kernel_sizes == (3, 5, 7) and encoder.dim == BASE.global_embed_dim == 16
  assert conv_encoder(PAPER.replace(conv_kernel_sizes=(3,))).dim == PAPER.byte_global_dim


def test_decoder_state_of_a_deep_model_carries_axis_names():
  cfg = VARIANTS["four_level"]
  decoder = decoder_for(Megabyte(cfg))
  assert decoder.unit_sizes == (8, 4, 2) and decoder.patch_size == 8
  state = decoder.init_state(2)
  axes = state_logical_axes(state)
  assert len(jax.tree_util.tree_leaves(state)) == len(jax.tree_util.tree_leaves(axes))
  assert state["local_cache"].k.shape[2] == cross_patch_cache_len(level_specs(cfg)[-1].stack) == 4
  assert [g.shape for g in state["mid_g"]] == [(2, 2, 16), (2, 2, 8)]
  assert state["conv_bytes"].shape == (2, 2)
  assert not decoder.fusable and decoder_for(Megabyte(BASE)).fusable


def test_every_level_stack_is_prepared_for_decoding():
  """`Decoder.prepare` folds and casts the blocks of every level's stack, middle ones too."""
  cfg = VARIANTS["three_level"].replace(dtype="bfloat16")
  params = nn.meta.unbox(_variables(cfg))["params"]
  prepared = decoder_for(Megabyte(cfg)).prepare(params, 1)
  for name in model_stacks(cfg):
    assert prepared[name]["block_0"]["mlp"]["in_kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(prepared[name]["block_0"]["mlp_norm"]["scale"]), 1.0)
  assert prepared["level_1_pad"].dtype == jnp.float32


def test_apply_rotary_depends_on_relative_positions_only():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32)
  def score(qp, kp):
    return jnp.sum(apply_rotary(q, jnp.array([qp])) * apply_rotary(k, jnp.array([kp])), -1)
  np.testing.assert_allclose(score(5, 2), score(103, 100), rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(score(5, 2) - score(5, 4)).max()) > 1e-3
  np.testing.assert_allclose(apply_rotary(q, jnp.array([0])), q)   # position 0: identity
  norms = jnp.linalg.norm(apply_rotary(q, jnp.array([7])), axis=-1)
  np.testing.assert_allclose(norms, jnp.linalg.norm(q, axis=-1), rtol=1e-5)


def test_conv_encoder_is_causal_and_valid_rows_reproduce_the_window_start():
  encoder = CausalConvEncoder(4, (3, 5))
  assert CausalConvEncoder.history((3, 5)) == 6
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 12, 4)), jnp.float32)
  params = encoder.init(jax.random.key(0), x)
  y = encoder.apply(params, x)
  changed = encoder.apply(params, x.at[:, 5].add(1.0))
  np.testing.assert_array_equal(y[:, :5], changed[:, :5])
  assert float(jnp.abs(y[:, 5:] - changed[:, 5:]).min()) >= 0 and \
      float(jnp.abs(y[:, 5:11] - changed[:, 5:11]).max()) > 1e-4
  # Rows 0..3 of the window, encoded with 6 rows of invalid history before them (garbage
  # values, masked out), equal the window's own first rows.
  history = jnp.full((1, 6, 4), 9.0)
  valid = jnp.arange(10) >= 6
  z = encoder.apply(params, jnp.concatenate([history, x[:, :4]], axis=1), valid=valid)
  np.testing.assert_allclose(z[:, 6:], y[:, :4], rtol=1e-6, atol=1e-6)


def test_cross_patch_stack_decodes_like_its_training_path():
  """The stack alone: prefill of 6 positions then one-position steps through the ring cache
  equal the training path over the whole sequence."""
  spec = StackSpec(dim=8, layers=2, heads=2, head_dim=4, cross_patch=2, patch=4)
  stack = TransformerStack(spec)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 8)), jnp.float32)
  params = stack.init(jax.random.key(0), x)
  full = stack.apply(params, x)
  cache = init_stack_cache(spec, 2, cross_patch_cache_len(spec))
  out, cache = stack.apply(params, x[:, :6], cache=cache, mode=Mode.PREFILL)
  np.testing.assert_allclose(out, full[:, :6], rtol=1e-5, atol=1e-5)
  for t in range(6, 16):
    out, cache = stack.apply(params, x[:, t:t + 1], cache=cache, index=jnp.asarray(t),
                             mode=Mode.DECODE)
    np.testing.assert_allclose(out[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
  assert isinstance(cache[0], KVCache) and cache[0].k.shape == (2, 8, 2, 4)


@pytest.mark.parametrize("changes, message", [
    (dict(patch_size=8, patch_sizes=(2, 2)), "multiply to 4, but patch_size=8"),
    (dict(patch_size=8, patch_sizes=(2, 4)), "mid_dims must have one entry per level"),
    (dict(patch_size=8, patch_sizes=(2, 4), mid_dims=(16,), mid_layers=(1,), mid_heads=(3,)),
     "mid_dims[0]=16 must be a multiple of mid_heads[0]=3"),
    (dict(patch_size=8, patch_sizes=(2, 4), mid_dims=(6,), mid_layers=(1,), mid_heads=(2,)),
     "mid_dims[0]=6 must be a multiple of the bytes per unit of level 1=4"),
    (dict(seq_len=36, patch_size=8, patch_sizes=(2, 4), mid_dims=(16,), mid_layers=(1,),
          mid_heads=(2,)), "seq_len=36 must be a multiple of the product of patch_sizes"),
    (dict(mid_dims=(16,)), "mid_dims must have one entry per level"),
    (dict(patch_sizes=(2, 0)), "every entry of patch_sizes must be a positive integer"),
    (dict(conv_kernel_sizes=3), "conv_kernel_sizes must be a tuple of positive integers"),
    (dict(cross_patch=5), "cross_patch must be an integer in 0..4"),
    (dict(cross_patch=-1), "cross_patch must be an integer in 0..4"),
    (dict(cross_patch=2, local_head_dim=3), "need an even local head width"),
    (dict(global_to_local="half"), "global_to_local must be one of ('slice', 'full')"),
    (dict(patch_embed="conv"), "patch_embed must be one of ('concat', 'linear')"),
    (dict(byte_shift="none"), "byte_shift must be one of ('patch', 'sequence')"),
    (dict(embed_init_std=0), "embed_init_std must be a positive number"),
    (dict(token_shift=1), "token_shift must be True or False"),
])
def test_bad_variant_configs_are_refused_naming_the_field(changes, message):
  with pytest.raises(ConfigError) as err:
    BASE.replace(**changes)
  assert message in str(err.value)


def test_configs_from_json_lists_are_tuples_and_hashable():
  values = dataclasses.asdict(VARIANTS["four_level"])
  values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
  cfg = MegabyteConfig.from_dict(values)
  assert cfg == VARIANTS["four_level"] and hash(cfg) == hash(VARIANTS["four_level"])
  old = {k: v for k, v in dataclasses.asdict(BASE).items()
         if k not in ("patch_sizes", "mid_dims", "mid_layers", "mid_heads",
                      "conv_kernel_sizes", "cross_patch")}
  assert MegabyteConfig.from_dict(old) == BASE     # configs saved before these fields


def test_flops_of_each_switch():
  """Each switch adds exactly its own cost per byte."""
  base = model_cost(BASE)
  conv = model_cost(VARIANTS["conv"])
  de = BASE.global_embed_dim                  # the conv encoder runs on the byte embeddings
  assert conv.matmul_flops_per_byte - base.matmul_flops_per_byte == 2 * 15 * de * de
  assert conv.attention_flops_per_byte == base.attention_flops_per_byte
  cross = model_cost(VARIANTS["cross_patch"])
  assert cross.matmul_flops_per_byte == base.matmul_flops_per_byte
  # 2 more keys per local query: 2 layers x 2 (scores, mixing) x 2 FLOPs x 2 keys x 16 wide.
  assert cross.attention_flops_per_byte - base.attention_flops_per_byte == 2 * 2 * 2 * 2 * 16
  # A middle level of width 16 runs once per 4 bytes over 2 units; its matmuls are 12 * 16^2
  # per layer (attention 4 * 16^2, MLP 8 * 16^2) plus the 16 x 16 input projection.
  # (In the paper's formulation, where every projection is of one slice.)
  three = model_cost(VARIANTS["three_level"].replace(**PAPER_FORMULATION))
  two_p8 = model_cost(PAPER.replace(patch_size=8))
  mid_matmul = 2 * (12 * 16 * 16 + 16 * 16) / 4
  local_projection_change = 2 * (4 * 16 - 4 * 16)           # 4-wide slices either way
  assert three.matmul_flops_per_byte - two_p8.matmul_flops_per_byte == pytest.approx(
      mid_matmul + local_projection_change)
  # The full projection reads the whole 32-wide global output for each byte (not an 8-wide
  # slice); the linear patch embedder maps 4 x 16 embeddings to 32 once per 4-byte patch.
  paper = model_cost(PAPER)
  full = model_cost(PAPER.replace(global_to_local="full"))
  assert full.matmul_flops_per_byte - paper.matmul_flops_per_byte == 2 * (32 - 8) * 16
  linear = model_cost(PAPER.replace(patch_embed="linear"))
  assert linear.matmul_flops_per_byte - paper.matmul_flops_per_byte == 2 * 4 * 16 * 32 / 4


def test_paper_table_counts_the_papers_configs():
  """The README's Table 15 rows: our stacks are the Table 14 sizes minus their 50k-token
  embedding tables; text MEGABYTE and its transformer baseline are compute-matched."""
  from megabyte_jax.flops import paper_table, paper_table_markdown
  rows = {(r["setup"], r["model"].split()[0]): r for r in paper_table()}
  text = rows[("text (arXiv, PG-19, ...)", "MEGABYTE")]
  assert text["global_params"] == 14 * (12 * 2048 ** 2 + 13 * 2048) + 2 * 2048
  baseline = rows[("text (arXiv, PG-19, ...)", "Transformer")]
  assert abs(text["train_flops_per_byte"] / baseline["train_flops_per_byte"] - 1) < 0.01
  audio = rows[("audio", "MEGABYTE")]
  assert abs(audio["global_params"] + 1024 * 50257 - 350e6) < 10e6    # "350M"
  table = paper_table_markdown()
  assert table.count("\n") == len(rows) + 1 and "| ImageNet640 |" in table
