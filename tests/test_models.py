"""Shapes, dtypes, causality and input checks of both models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megabyte_jax.config import PAPER_FORMULATION

from megabyte_jax import ByteTransformer, InputError, Megabyte, MegabyteConfig
from megabyte_jax.flops import model_cost


def _tokens(batch, length, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)), jnp.int32)


def _build(kind, megabyte_cfg, transformer_cfg):
  return Megabyte(megabyte_cfg) if kind == "megabyte" else ByteTransformer(transformer_cfg)


def test_public_api_example():
  """The snippet from the README runs as written."""
  cfg = MegabyteConfig(seq_len=64, patch_size=8, global_dim=64, global_layers=2,
                       global_heads=4, local_dim=32, local_layers=2, local_heads=2)
  model = Megabyte(cfg)
  tokens = _tokens(2, 64)
  variables = model.init(jax.random.key(0), tokens)
  logits = model.apply(variables, tokens)
  assert logits.shape == (2, 64, 256)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
# Patch size 4: t=0 starts a patch, 5 and 6 are inside one, 11 ends one, 31 is the last byte.
@pytest.mark.parametrize("t", [0, 5, 6, 11, 16, 31])
def test_causality(kind, t, megabyte_cfg, transformer_cfg):
  """Changing byte t moves no logit at positions <= t, and does move a later one."""
  model = _build(kind, megabyte_cfg, transformer_cfg)
  tokens = _tokens(2, 32)
  variables = model.init(jax.random.key(1), tokens)
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % 256)
  before = np.asarray(model.apply(variables, tokens))
  after = np.asarray(model.apply(variables, changed))
  np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1])
  if t + 1 < tokens.shape[1]:
    assert np.abs(before[:, t + 1:] - after[:, t + 1:]).max() > 1e-6


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_shorter_input_is_a_prefix(kind, megabyte_cfg, transformer_cfg):
  """T may be any multiple of the patch up to seq_len; a prefix gives the same logits."""
  model = _build(kind, megabyte_cfg, transformer_cfg)
  tokens = _tokens(1, 32)
  variables = jax.jit(model.init)(jax.random.key(2), tokens)
  apply = jax.jit(model.apply)
  full = np.asarray(apply(variables, tokens))
  short = np.asarray(apply(variables, tokens[:, :12]))
  np.testing.assert_allclose(short, full[:, :12], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_bfloat16_compute_keeps_float32_params_and_logits(kind, megabyte_cfg,
                                                          transformer_cfg):
  cfgs = {"megabyte": megabyte_cfg, "transformer": transformer_cfg}
  cfg = cfgs[kind].replace(dtype="bfloat16")
  model = Megabyte(cfg) if kind == "megabyte" else ByteTransformer(cfg)
  tokens = _tokens(2, 32)
  variables = model.init(jax.random.key(0), tokens)
  dtypes = {p.dtype for p in jax.tree_util.tree_leaves(nn.meta.unbox(variables))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  logits = model.apply(variables, tokens)
  assert logits.dtype == jnp.float32
  reference = Megabyte(cfgs[kind]) if kind == "megabyte" else ByteTransformer(cfgs[kind])
  exact = reference.apply(variables, tokens)
  # bf16 compute is close to, but not the same as, float32 compute.
  assert 0 < float(jnp.abs(logits - exact).max()) < 0.5


def test_param_dtype_bfloat16(megabyte_cfg):
  model = Megabyte(megabyte_cfg.replace(param_dtype="bfloat16", dtype="bfloat16"))
  variables = jax.jit(model.init)(jax.random.key(0), _tokens(1, 32))
  dtypes = {p.dtype for p in jax.tree_util.tree_leaves(nn.meta.unbox(variables))}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("changes", [
    {"activation": "swiglu"}, {"activation": "relu", "norm": "rmsnorm"},
    {"tie_embeddings": True, "use_bias": False}, {"init_std": 0.006},
    {"global_head_dim": 8, "local_head_dim": 4}, {"dropout": 0.1, "embed_dropout": 0.1}])
def test_variants_run_and_param_count_matches_flops(changes, megabyte_cfg):
  cfg = megabyte_cfg.replace(**changes)
  model = Megabyte(cfg)
  tokens = _tokens(2, 32)
  variables = model.init(jax.random.key(0), tokens)
  logits = model.apply(variables, tokens)
  assert logits.shape == (2, 32, 256)
  count = sum(p.size for p in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))
  assert model_cost(cfg).params == count


def test_transformer_param_count_matches_flops(transformer_cfg):
  model = ByteTransformer(transformer_cfg)
  variables = model.init(jax.random.key(0), _tokens(1, 32))
  count = sum(p.size for p in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))
  assert model_cost(transformer_cfg).params == count


def test_dropout_only_when_not_deterministic(megabyte_cfg):
  model = Megabyte(megabyte_cfg.replace(dropout=0.5))
  tokens = _tokens(2, 32)
  variables = model.init(jax.random.key(0), tokens)
  a = model.apply(variables, tokens)
  b = model.apply(variables, tokens)
  np.testing.assert_array_equal(a, b)  # deterministic by default
  c = model.apply(variables, tokens, deterministic=False, rngs={"dropout": jax.random.key(3)})
  assert float(jnp.abs(a - c).max()) > 1e-3


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_every_parameter_has_logical_axis_names(kind, megabyte_cfg, transformer_cfg):
  model = _build(kind, megabyte_cfg, transformer_cfg)
  variables = model.init(jax.random.key(0), _tokens(1, 32))
  leaves = jax.tree_util.tree_leaves(
      variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
  specs = nn.get_partition_spec(variables)
  assert specs  # the names can be turned into PartitionSpecs by sharding code


@pytest.mark.parametrize("paper", [True, False])
def test_megabyte_parameter_structure(megabyte_cfg, paper):
  """The parameters: global/local embeddings, pads, both stacks, head; in the paper's
  formulation its own (D_G-wide global embeddings, a D_G -> D_L projection), with the
  defaults a patch projection and a projection of the whole global output per position."""
  cfg = megabyte_cfg.replace(**PAPER_FORMULATION) if paper else megabyte_cfg
  variables = Megabyte(cfg).init(jax.random.key(0), _tokens(1, 32))
  params = nn.meta.unbox(variables["params"])
  if paper:
    assert params["global_embed"]["embedding"].shape == (256, 8)   # D_G = 32 / 4
    assert params["global_pos"].shape == (32, 8)
    assert params["global_to_local"].shape == (8, 16)              # D_G -> D_L
    assert "patch_embed" not in params
  else:
    assert params["global_embed"]["embedding"].shape == (256, 16)  # D_L
    assert "global_pos" not in params and "local_pos" not in params   # rotary positions
    assert params["patch_embed"]["proj"]["kernel"].shape == (4 * 16, 32)
    assert params["global_to_local"].shape == (32, 4, 16)          # [P*D_G, P, D_L]
  assert params["global_pad"].shape == (32,)                       # one P*D_G patch
  assert params["local_embed"]["embedding"].shape == (256, 16)
  assert params["local_pad"].shape == (16,)
  assert set(params["global_model"]) == {"block_0", "block_1", "final_norm"}
  assert set(params["local_model"]) == {"block_0", "block_1", "final_norm"}
  assert params["head"]["kernel"].shape == (16, 256)


@pytest.mark.parametrize("tokens, message", [
    (np.zeros((2, 30), np.int32), "not a multiple of the patch size 4"),
    (np.zeros((2, 40), np.int32), "exceeds the model's seq_len 32"),
    (np.full((2, 32), 256, np.int32), "0..255"),
    (np.full((2, 32), -1, np.int32), "0..255"),
    (np.zeros((2, 32), np.float32), "integer byte ids"),
    (np.zeros((32,), np.int32), "[batch, length]"),
])
def test_bad_input_is_refused_with_a_clear_message(tokens, message, megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  variables = model.init(jax.random.key(0), _tokens(1, 32))
  with pytest.raises(InputError) as err:
    model.apply(variables, tokens)
  assert message in str(err.value)


def test_transformer_rejects_out_of_range_bytes(transformer_cfg):
  model = ByteTransformer(transformer_cfg)
  variables = model.init(jax.random.key(0), _tokens(1, 32))
  with pytest.raises(InputError, match="0..255"):
    model.apply(variables, np.full((1, 8), 300, np.int32))


def test_jit_apply_matches_eager(megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  tokens = _tokens(2, 32)
  variables = model.init(jax.random.key(0), tokens)
  eager = model.apply(variables, tokens)
  jitted = jax.jit(model.apply)(variables, tokens)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_byte_embed_matches_a_gather_and_its_gradient(dtype):
  """The one-hot matmul lookup gives `nn.Embed`'s values and the scatter-add's gradient,
  on text-like ids where a few bytes repeat many times."""
  from megabyte_jax.layers import ByteEmbed   # pylint: disable=g-import-not-at-top
  ids = jnp.asarray(np.frombuffer(b"    def f(x):\n        return x  # eeee" * 3, np.uint8))
  ids = ids.reshape(3, -1)
  ours, ref = ByteEmbed(256, 24, dtype=dtype), nn.Embed(256, 24, dtype=dtype)
  params = ref.init(jax.random.key(0), ids)
  np.testing.assert_array_equal(ours.apply(params, ids), ref.apply(params, ids))
  assert ours.apply(params, ids).dtype == dtype
  cot = jax.random.normal(jax.random.key(1), ids.shape + (24,))
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, ids).astype(jnp.float32) * cot))(
      params)["params"]["embedding"]
  exact = grad(nn.Embed(256, 24))   # float32 gather: its scatter-add gradient
  ours_grad = grad(ours)
  if dtype == jnp.float32:
    np.testing.assert_allclose(ours_grad, exact, rtol=1e-6, atol=1e-6)
  else:   # one bf16 rounding of a float32-accumulated sum (the scatter rounds at every add)
    scale = float(jnp.max(jnp.abs(exact)))
    np.testing.assert_allclose(ours_grad, exact, atol=scale / 128)
    assert jnp.max(jnp.abs(ours_grad - exact)) <= jnp.max(jnp.abs(grad(ref) - exact))
  with pytest.raises(ValueError, match="integer"):
    ours.apply(params, ids.astype(jnp.float32))


@pytest.mark.parametrize("norm,use_bias", [("layernorm", True), ("layernorm", False),
                                           ("rmsnorm", False)])
def test_norm_folded_into_the_next_kernel_matches_the_flax_norm(norm, use_bias):
  """`Norm` + `fold_norm` computes `flax norm(x) @ W` (values and every gradient, float32),
  with the same parameter tree as flax's `LayerNorm` / `RMSNorm`; `make_norm` (the norm
  applied in full) is that flax norm."""
  import flax.linen as nn
  from megabyte_jax.layers import Norm, StackSpec, fold_norm, make_norm
  spec = StackSpec(dim=16, layers=1, heads=2, head_dim=8, norm=norm, use_bias=use_bias)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 16)) * 3 + 1, jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(16, 2, 7)), jnp.float32)
  flax_norm = (nn.RMSNorm(epsilon=1e-6) if norm == "rmsnorm"
               else nn.LayerNorm(epsilon=1e-5, use_bias=use_bias))
  ours = Norm(spec)
  params = flax_norm.init(jax.random.key(0), x)["params"]
  for module in (ours, make_norm(spec)):
    assert jax.tree_util.tree_structure(
        nn.unbox(module.init(jax.random.key(0), x)["params"])) == \
        jax.tree_util.tree_structure(params)
  params = jax.tree_util.tree_map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  np.testing.assert_allclose(make_norm(spec).apply({"params": params}, x),
                             flax_norm.apply({"params": params}, x), rtol=1e-5, atol=1e-5)
  def reference(params, kernel, x):
    return jnp.einsum("btd,dnf->btnf", flax_norm.apply({"params": params}, x), kernel)
  def folded(params, kernel, x):
    x_hat, affine = ours.apply({"params": params}, x)
    k, shift = fold_norm(kernel, affine)
    y = jnp.einsum("btd,dnf->btnf", x_hat, k)
    return y if shift is None else y + shift
  np.testing.assert_allclose(folded(params, kernel, x), reference(params, kernel, x),
                             rtol=1e-5, atol=1e-5)
  probe = jnp.asarray(rng.normal(size=(3, 5, 2, 7)), jnp.float32)
  grads = [jax.grad(lambda *a, f=f: (f(*a) * probe).sum(), argnums=(0, 1, 2))(
      params, kernel, x) for f in (reference, folded)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         grads[0], grads[1])
  assert fold_norm(kernel, None) == (kernel, None)


@pytest.mark.parametrize("length", [1, 4, 8])
def test_short_causal_attention_matches_dot_product_attention(length):
  """`short_causal_attention` is causal attention: values and gradients as jax's."""
  from megabyte_jax.layers import short_causal_attention
  rng = np.random.default_rng(length)
  q, k, v = (jnp.asarray(rng.normal(size=(6, length, 3, 16)), jnp.float32) for _ in range(3))
  probe = jnp.asarray(rng.normal(size=(6, length, 3, 16)), jnp.float32)
  @jax.jit
  def ref(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  short = jax.jit(short_causal_attention)
  np.testing.assert_allclose(short(q, k, v), ref(q, k, v), atol=2e-6)
  g_ref = jax.jit(jax.grad(lambda *a: (ref(*a) * probe).sum(), argnums=(0, 1, 2)))(q, k, v)
  g = jax.jit(jax.grad(lambda *a: (short(*a) * probe).sum(), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5)
  out = short(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), ref(q, k, v), atol=0.05)


@pytest.mark.parametrize("sequence", [False, True])
def test_byte_unit_inputs_match_shift_right_of_the_embeddings(sequence):
  """The byte level's input (`unit_inputs` of the previous units, the two-hot matmul) equals
  `shift_right(embed(ids), pad) + pos`, values and gradients, with the pad at every patch
  start ("patch") or at the window start only ("sequence")."""
  from megabyte_jax.layers import byte_embedding, shift_right
  from megabyte_jax.models.megabyte import previous_units, unit_inputs
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.integers(0, 256, (2, 3, 8)), jnp.int32)
  embed = byte_embedding(16, None, jnp.float32, jnp.float32, "e")
  table = embed.init(jax.random.key(0), ids)
  pad = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
  pos = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(2, 3, 8, 16)), jnp.float32)
  def ours(table, pad, pos, dropout=None):
    previous, mask = previous_units(ids.reshape(2, 24, 1), 8, sequence)
    y = unit_inputs(previous, mask, jnp.arange(24) % 8, embed.bind(table), pad, pos,
                    jnp.float32, dropout)
    return y.reshape(2, 3, 8, 16)
  def reference(table, pad, pos):
    y = embed.apply(table, ids)
    if sequence:
      return shift_right(y.reshape(2, 24, 16), pad, axis=1).reshape(2, 3, 8, 16) + pos
    return shift_right(y, pad, axis=2) + pos
  np.testing.assert_allclose(ours(table, pad, pos), reference(table, pad, pos), atol=1e-6)
  grads = [jax.grad(lambda *a, f=f: (f(*a) * probe).sum(), argnums=(0, 1, 2))(table, pad, pos)
           for f in (ours, reference)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), *grads)
  # The general path (units of several bytes, or embedding dropout) computes the same sum.
  no_drop = nn.Dropout(0.0).bind({})
  np.testing.assert_allclose(ours(table, pad, pos, no_drop), reference(table, pad, pos),
                             atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_byte_head_folds_the_final_norm(tied):
  """`ByteHead(h, norm=(scale, bias))` equals the head applied to `h * scale + bias`."""
  from megabyte_jax.layers import ByteHead, byte_embedding
  rng = np.random.default_rng(4)
  h = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  scale, bias = (jnp.asarray(rng.normal(size=(16,)), jnp.float32) for _ in range(2))
  head = ByteHead(16)
  embed = byte_embedding(16, None, jnp.float32, jnp.float32, "e")
  table = embed.init(jax.random.key(1), jnp.zeros((1,), jnp.int32))
  bound = embed.bind(table) if tied else None
  params = head.init(jax.random.key(0), h, bound)
  folded = head.apply(params, h, bound, norm=(scale, bias))
  plain = head.apply(params, h * scale + bias, bound)
  np.testing.assert_allclose(folded, plain, rtol=1e-5, atol=1e-5)


def test_megabyte_with_the_pallas_local_attention_matches_xla():
  """`attention_impl="pallas"` (the GPU kernels, here in Pallas' interpreter) gives the
  model's logits and gradients of `attention_impl="xla"`."""
  cfg = MegabyteConfig(seq_len=32, patch_size=8, global_dim=32, global_layers=1,
                       global_heads=2, local_dim=32, local_layers=2, local_heads=2,
                       attention_impl="xla")
  tokens = _tokens(2, 32)
  params = jax.jit(Megabyte(cfg).init)(jax.random.key(0), tokens)
  import dataclasses
  def loss(model, params):
    return model.apply(params, tokens).mean()
  models = [Megabyte(cfg), Megabyte(dataclasses.replace(cfg, attention_impl="pallas"))]
  # The global model (4 patches) is also short enough for the kernel. Compiled: op by op,
  # the interpreted kernels take many times as long.
  logits = [jax.jit(m.apply)(params, tokens) for m in models]
  np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)
  grads = [jax.jit(jax.grad(lambda p, m=m: loss(m, p)))(params) for m in models]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), *grads)


def test_auto_attention_choice_on_gpu(monkeypatch):
  """On GPU "auto" takes cuDNN for long sequences, the Pallas patch kernel for short ones
  it supports, else `short_causal_attention`; XLA elsewhere."""
  from megabyte_jax.layers import attention as layers
  bf16 = jnp.bfloat16
  assert layers.choose_attention_impl("auto", bf16, 64, 8, 8) == "xla"     # CPU
  assert layers.choose_attention_impl("short", bf16, 64, 1024, 8) == "short"
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  assert layers.choose_attention_impl("auto", bf16, 64, 1024, 8) == "cudnn"
  assert layers.choose_attention_impl("auto", bf16, 64, 8, 8) == "pallas"
  assert layers.choose_attention_impl("auto", bf16, 48, 8, 8) == "short"   # unsupported width
  assert layers.choose_attention_impl("auto", jnp.float32, 64, 512, 8) == "xla"


def test_the_stack_is_told_its_mode_and_refuses_a_mismatched_cache():
  """`Mode` is explicit: TRAIN takes no cache, PREFILL and DECODE need one; PREFILL fills an
  empty cache with the training numbers."""
  from megabyte_jax.layers import Mode, StackSpec, TransformerStack, init_stack_cache
  spec = StackSpec(dim=8, layers=1, heads=2, head_dim=4)
  stack = TransformerStack(spec)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 8)), jnp.float32)
  params = stack.init(jax.random.key(0), x)
  cache = init_stack_cache(spec, 1, 4)
  with pytest.raises(ValueError, match="mode train needs no cache"):
    stack.apply(params, x, cache=cache)
  with pytest.raises(ValueError, match="mode prefill needs a cache"):
    stack.apply(params, x, mode=Mode.PREFILL)
  out, filled = stack.apply(params, x, cache=cache, mode=Mode.PREFILL)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(stack.apply(params, x)))
  assert float(jnp.abs(filled[0].k).sum()) > 0
