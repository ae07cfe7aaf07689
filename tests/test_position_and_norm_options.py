"""Position and normalisation options (`positions`, `qk_norm`) and the optimizer options
`train.z_loss` and `train.lr_scales`: what each changes, that decoding follows it, and the
one-line errors for bad values."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from megabyte_jax import config_checks
from megabyte_jax import ByteTransformer, Megabyte, MegabyteConfig, TransformerConfig
from megabyte_jax.config import PAPER_FORMULATION
from megabyte_jax.errors import ConfigError
from megabyte_jax.experiment import base_config
from megabyte_jax.inference.generation import DecodeOptions, cached_logits
from megabyte_jax.layers import fused_decode
from megabyte_jax.models import build_model
from megabyte_jax.layers.attention import normalize_and_rotate, rms_normalize
from megabyte_jax.models.levels import level_specs
from megabyte_jax.training.train_state import (TrainState, decay_mask,
                                               learning_rate_schedule, lr_scale,
                                               make_optimizer, param_path)
from megabyte_jax.training.train_step import make_train_step

T = 32
CFG = MegabyteConfig(seq_len=T, patch_size=4, global_dim=32, global_layers=1, global_heads=2,
                     local_dim=16, local_layers=1, local_heads=2)
TCFG = TransformerConfig(seq_len=T, dim=16, layers=1, heads=2)
TOKENS = np.random.default_rng(0).integers(0, 256, (2, T)).astype(np.int32)


def _init(model):
  return nn.meta.unbox(model.init(jax.random.key(0), jnp.asarray(TOKENS)))


def _shapes(model):
  """The parameter tree's shapes, without compiling the init."""
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(TOKENS)))


def _names(params):
  return {param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_position_tables_only_with_learned_positions():
  """MEGABYTE defaults to rotary positions, the byte Transformer to learned ones (the
  paper's formulation keeps learned tables); only "learned" creates tables."""
  assert (CFG.positions, TCFG.positions, CFG.qk_norm) == ("rotary", "learned", False)
  assert CFG.replace(**PAPER_FORMULATION).positions == "learned"
  for cfg, tables in ((CFG, {"global_pos", "local_pos"}), (TCFG, {"pos"})):
    model_cls = Megabyte if isinstance(cfg, MegabyteConfig) else ByteTransformer
    learned = cfg.replace(positions="learned")
    assert tables <= _names(_shapes(model_cls(learned))["params"])
    for positions in ("none", "rotary"):
      names = _names(_shapes(model_cls(cfg.replace(positions=positions)))["params"])
      assert not tables & names, positions


def test_rotary_positions_change_the_function_of_the_same_parameters():
  """"none" and "rotary" share one parameter tree: the same parameters give other logits
  with rotary positions (they reach every attention layer), and the same logits at the
  first position of every stack's sequence (rotation by angle 0)."""
  for cfg, model_cls in ((CFG, Megabyte), (TCFG, ByteTransformer)):
    plain, rotary = model_cls(cfg.replace(positions="none")), \
        model_cls(cfg.replace(positions="rotary"))
    variables = _init(plain)
    a = np.asarray(plain.apply(variables, TOKENS))
    b = np.asarray(rotary.apply(variables, TOKENS))
    assert np.abs(a - b).max() > 1e-3, model_cls.__name__
    np.testing.assert_allclose(a[:, 0], b[:, 0], atol=1e-5)


def test_rotary_attention_scores_depend_only_on_the_distance():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  def score(qpos, kpos):
    rq, _ = normalize_and_rotate(q, q, None, True, qpos)
    rk, _ = normalize_and_rotate(k, k, None, True, kpos)
    return float(jnp.sum(rq * rk))
  assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
  assert abs(score(5, 2) - score(5, 4)) > 1e-4


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
  """With QK-norm, scaling the query and key columns of a QKV kernel leaves the model's
  function unchanged; without it the logits move."""
  for qk_norm, same in ((True, True), (False, False)):
    model = Megabyte(CFG.replace(qk_norm=qk_norm))
    variables = _init(model)
    attn = variables["params"]["local_model"]["block_0"]["attn"]
    assert ("q_norm" in attn and "k_norm" in attn) == qk_norm
    before = np.asarray(model.apply(variables, TOKENS))
    kernel = attn["qkv_kernel"]
    attn["qkv_kernel"] = kernel.at[:, :2].multiply(7.0)      # [dim, 3 (q, k, v), heads, hd]
    after = np.asarray(model.apply(variables, TOKENS))
    assert np.allclose(before, after, atol=2e-4) == same, qk_norm


def test_rms_normalize_gives_unit_rms_times_the_scale():
  x = jax.random.normal(jax.random.key(0), (3, 5, 2, 8)) * 9.0
  scale = jnp.arange(1, 9, dtype=jnp.float32)
  y = np.asarray(rms_normalize(x, scale))
  np.testing.assert_allclose(np.sqrt(np.mean((y / np.asarray(scale)) ** 2, axis=-1)), 1.0,
                             rtol=1e-4)


@pytest.mark.parametrize("options", [dict(positions="none"),
                                     dict(qk_norm=True, positions="rotary")])
def test_cached_decoding_follows_the_position_and_norm_options(options):
  """KV-cached logits equal the full forward pass (prompts ending inside a patch and on a
  patch boundary), for MEGABYTE and the byte Transformer, through XLA and through the fused
  decode kernels (in Pallas' interpreter)."""
  for model in (Megabyte(CFG.replace(**options)), ByteTransformer(TCFG.replace(**options))):
    variables = _init(model)
    full = np.asarray(model.apply(variables, TOKENS))
    for prompt in (5, 8):
      cached = np.asarray(cached_logits(model, variables, TOKENS, prompt))
      np.testing.assert_allclose(cached, full[:, prompt:], atol=2e-5, rtol=2e-5)
  model = Megabyte(CFG.replace(**options))
  variables = _init(model)
  spec = level_specs(model.config)[-1].stack                 # power-of-two sizes throughout
  assert fused_decode.supported(spec, 2, 4)
  fused = np.asarray(cached_logits(model, variables, TOKENS, 5,
                                   DecodeOptions(fused="interpret")))
  np.testing.assert_allclose(fused, np.asarray(model.apply(variables, TOKENS))[:, 5:],
                             atol=2e-5, rtol=2e-5)


def test_bad_position_and_norm_settings_are_refused_in_one_line():
  with pytest.raises(ConfigError, match="positions must be one of"):
    CFG.replace(positions="alibi")
  with pytest.raises(ConfigError, match="qk_norm must be True or False"):
    TCFG.replace(qk_norm="yes")
  with pytest.raises(ConfigError, match="even attention head width"):
    TCFG.replace(positions="rotary", dim=18, heads=2)


# --- the optimizer options ------------------------------------------------------------------


def _state(model, optimizer):
  params = _init(model)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def _train_cfg(**changes):
  t = base_config("transformer", seq_len=T, dim=16, layers=1, heads=2).train
  t.steps, t.warmup_steps = 10, 0
  for key, value in changes.items():
    t[key] = value
  return t


def _one_step(train_cfg, z_loss=0.0, model=None):
  model = model or ByteTransformer(TCFG)
  optimizer = make_optimizer(train_cfg)
  step = make_train_step(model, optimizer, seed=0, dropout=False, z_loss=z_loss)
  state = _state(model, optimizer)
  before = jax.tree_util.tree_map(jnp.copy, state.params)
  state, metrics = step(state, jnp.asarray(TOKENS))
  return before, state.params, metrics


def test_z_loss_changes_the_update_not_the_reported_loss():
  """The reported loss is the plain next-byte nll with or without the z-loss; the update
  differs and pulls the softmax normaliser towards 1 (log Z towards 0)."""
  model = ByteTransformer(TCFG)
  _, plain, m0 = _one_step(_train_cfg(), 0.0, model)
  before, pulled, m1 = _one_step(_train_cfg(), 10.0, model)
  assert float(m0["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
  def mean_log_z2(params):
    logits = model.apply({"params": params}, TOKENS)
    return float(jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2))
  assert mean_log_z2(pulled) < mean_log_z2(plain) < mean_log_z2(before) + 1.0
  with pytest.raises(ConfigError, match="z_loss must be >= 0"):
    make_train_step(model, make_optimizer(_train_cfg()), 0, False, z_loss=-1.0)


def test_lr_scales_multiply_the_update_of_the_parameters_they_match():
  """`(("local_", 0.0),)` freezes the parameters under `local_*` while the others move; a
  factor of 2 doubles their update exactly (the Adam step and the weight decay alike)."""
  rng = np.random.default_rng(0)
  params = {"local_model": {"qkv_kernel": jnp.asarray(rng.normal(size=(4, 3)))},
            "local_pad": jnp.asarray(rng.normal(size=(3,))),
            "global_model": {"qkv_kernel": jnp.asarray(rng.normal(size=(4, 3)))},
            "head": {"kernel": jnp.asarray(rng.normal(size=(3, 2)))}}
  grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
  def delta(**train):
    optimizer = make_optimizer(_train_cfg(**train))
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates
  once, twice = delta(), delta(lr_scales=(("local_", 2.0),))
  frozen = delta(lr_scales=(("local_", 0.0),))
  for path, d1 in jax.tree_util.tree_flatten_with_path(once)[0]:
    d2, d0 = np.asarray(_at(twice, path)), np.asarray(_at(frozen, path))
    assert np.abs(np.asarray(d1)).max() > 0
    if param_path(path).startswith("local_"):
      np.testing.assert_allclose(d2, 2 * np.asarray(d1), rtol=1e-6)
      np.testing.assert_array_equal(d0, 0.0)
    else:
      np.testing.assert_array_equal(d2, d1)
      np.testing.assert_array_equal(d0, d1)


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_lr_scale_takes_the_first_rule_matching_the_start_of_the_path():
  rules = (("local_model/block_0", 3.0), ("local_", 2.0), ("head", 0.5))
  assert lr_scale("local_model/block_0/attn/qkv_kernel", rules) == 3.0
  assert lr_scale("local_embed/embedding", rules) == 2.0
  assert lr_scale("global_model/local_x", rules) == 1.0     # matched at the start only
  assert lr_scale("head/kernel", rules) == 0.5


@pytest.mark.parametrize("rules, message", [
    ("local_", "tuple of \\(pattern, factor\\) pairs"),
    ((("local_",),), "each entry must be a \\(pattern, factor\\) pair"),
    ((("local_[", 2.0),), "not a regular expression"),
    ((("local_", -1.0),), "must be >= 0"),
    ((("local_", float("nan")),), "finite number"),
])
def test_bad_lr_scales_are_refused_in_one_line(rules, message):
  with pytest.raises(ConfigError, match=message):
    config_checks.check_lr_scales(rules)
  if not isinstance(rules, str):     # and by the optimizer that reads them
    with pytest.raises(ConfigError, match=message):
      make_optimizer(_train_cfg(lr_scales=rules))


def test_an_empty_lr_scales_keeps_the_optimizer_of_before():
  """No rules: the same transformation (and optimizer-state structure) as before the
  option existed, so old checkpoints restore."""
  params = {"w": jnp.ones((2, 2))}
  with_rules = make_optimizer(_train_cfg(lr_scales=(("x", 2.0),))).init(params)
  without = make_optimizer(_train_cfg()).init(params)
  assert len(jax.tree_util.tree_structure(with_rules).children()) == 3
  t = _train_cfg()
  before = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adamw(
      learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
      mask=functools.partial(decay_mask, rule="kernels")))
  assert jax.tree_util.tree_structure(without) == jax.tree_util.tree_structure(
      before.init(params))


@pytest.mark.parametrize("options", [dict(positions="learned"), dict(positions="none"),
                                     dict(positions="rotary", qk_norm=True)])
def test_flops_count_the_parameters_each_option_creates(options):
  from megabyte_jax.flops import model_cost
  for cfg, model_cls in ((CFG.replace(**options), Megabyte),
                         (TCFG.replace(**options), ByteTransformer)):
    created = sum(x.size for x in jax.tree_util.tree_leaves(_shapes(model_cls(cfg))))
    assert created == model_cost(cfg).params, (model_cls.__name__, options)


def test_a_config_saved_before_positions_existed_loads_with_learned_positions(tmp_path):
  """A run saved with the 2026-12 defaults but before `positions` existed (no such field in
  its config.json) trained learned position tables: it loads as that model."""
  import json
  from megabyte_jax.training.workdir import config_path, load_config, save_config
  config = base_config("megabyte", **{k: getattr(CFG, k) for k in (
      "seq_len", "patch_size", "global_dim", "global_layers", "global_heads", "local_dim",
      "local_layers", "local_heads")})
  workdir = str(tmp_path / "run")
  save_config(workdir, config)
  path = config_path(workdir)
  values = json.loads(open(path).read())
  del values["model"]["positions"], values["model"]["qk_norm"]
  open(path, "w").write(json.dumps(values))
  loaded = load_config(workdir)
  _, model_cfg = build_model(loaded.model)
  assert (model_cfg.positions, model_cfg.qk_norm) == ("learned", False)
  assert model_cfg.embed_init_std == 1.0 and model_cfg.token_shift   # of 2026-12
