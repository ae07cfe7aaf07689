"""Sharding over device meshes (8 emulated CPU devices), multi-process runs, memory levers.

The mesh tests need 8 CPU devices, which must be requested before JAX starts:
`XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest tests/test_sharding.py`
(`make test` runs this file that way, and the rest of the suite on one device).
"""

import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from conftest import REPO
from megabyte_jax import ByteTransformer, ConfigError, Megabyte, TransformerConfig
from megabyte_jax import config_checks
from megabyte_jax import sharding
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.experiment import base_config
from megabyte_jax.layers import stack_block_params
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training.setup import TrainSetup
from megabyte_jax.training.train_step import make_train_step
from megabyte_jax.training.workdir import load_config, resolve_config, save_config

CPUS = jax.devices("cpu")
needs_8 = pytest.mark.skipif(
    len(CPUS) < 8, reason="needs 8 CPU devices: run with "
    "XLA_FLAGS=--xla_force_host_platform_device_count=8 (as `make test` does)")


def _mesh(shape):
  return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=CPUS[:np.prod(shape)])


def _tokens(batch=8, length=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.uint8)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


_REFERENCE = {}


def _reference_step(model, tokens):
  """The single-device SGD step of `_step`, computed once per model config."""
  key = model.config
  if key not in _REFERENCE:
    _REFERENCE[key] = _step(model, optax.sgd(0.5), tokens)
  return _REFERENCE[key]


def _step(model, optimizer, tokens, mesh=None, accum=1):
  """One training step from the seed-0 init: (metrics, new state)."""
  seq_len = model.config.seq_len
  if mesh is None:
    state = state_lib.create_train_state(model, seq_len, optimizer, jax.random.key(0))
    step = make_train_step(model, optimizer, 0, False, grad_accum_steps=accum)
    batch = jax.device_put(tokens, CPUS[0])
    state = jax.device_put(state, CPUS[0])
  else:
    shardings = state_lib.state_shardings(model, seq_len, optimizer, mesh)
    state = state_lib.create_train_state(model, seq_len, optimizer, jax.random.key(0),
                                         shardings)
    step = make_train_step(model, optimizer, 0, False, grad_accum_steps=accum, mesh=mesh,
                           state_sharding=shardings)
    batch = sharding.shard_batch(tokens, sharding.batch_sharding(mesh))
  new, metrics = step(state, batch)
  return {k: float(v) for k, v in metrics.items()}, new


def test_mesh_shape_fills_one_axis_and_refuses_bad_shapes():
  assert sharding.mesh_shape({"data": -1}, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8)["fsdp"] == 2
  assert sharding.mesh_shape(None, 1) == {"data": 1, "fsdp": 1, "tensor": 1}
  for cfg, message in [({"pipeline": 2}, "unknown mesh axes"), ({"data": 0}, "positive"),
                       ({"data": -1, "fsdp": -1}, "only one"), ({"data": 3, "fsdp": -1},
                                                               "does not divide"),
                       ({"data": 2, "fsdp": 2}, "has 4 devices, but 8")]:
    with pytest.raises(ConfigError, match=message):
      sharding.mesh_shape(cfg, 8)


@needs_8
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_the_single_device_step(shape, megabyte_cfg):
  """Loss, gradient norm and the SGD update (exactly lr * gradients) match one device."""
  model, optimizer, tokens = Megabyte(megabyte_cfg), optax.sgd(0.5), _tokens()
  ref_metrics, ref_state = _reference_step(model, tokens)
  metrics, state = _step(model, optimizer, tokens, _mesh(shape))
  assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-6)
  assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-5)
  for got, want in zip(_leaves(state.params), _leaves(ref_state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_8
def test_pallas_patch_attention_runs_per_shard(megabyte_cfg):
  """`attention_impl="pallas"` on a data x fsdp x tensor mesh (`shard_map` around the
  kernels, here in Pallas' interpreter) takes the step of XLA's attention on one device."""
  import dataclasses
  cfg = dataclasses.replace(megabyte_cfg, local_dim=32)   # head width 16: kernel-sized
  ref_metrics, ref_state = _reference_step(Megabyte(cfg), _tokens())
  model = Megabyte(dataclasses.replace(cfg, attention_impl="pallas"))
  metrics, state = _step(model, optax.sgd(0.5), _tokens(), _mesh((2, 2, 2)))
  assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-6)
  assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-5)
  for got, want in zip(_leaves(state.params), _leaves(ref_state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_8
def test_gradient_accumulation_equals_the_whole_batch(megabyte_cfg):
  model, optimizer, tokens = Megabyte(megabyte_cfg), optax.sgd(0.5), _tokens()
  ref_metrics, ref_state = _reference_step(model, tokens)
  metrics, state = _step(model, optimizer, tokens, _mesh((2, 2, 2)), accum=2)
  assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-6)
  for got, want in zip(_leaves(state.params), _leaves(ref_state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="grad_accum_steps"):
    make_train_step(model, optimizer, 0, False, grad_accum_steps=0)


@needs_8
def test_an_fp8_model_trains_on_a_data_fsdp_tensor_mesh(megabyte_cfg):
  """`model.fp8` on a (2, 2, 2) mesh: the first step takes the single-device fp8 step (the
  per-tensor amax is exact under any split; sharded matmuls add their partial sums in
  another order, which could move a value across an FP8 rounding boundary, hence looser
  tolerances than the bf16/float32 tests above), and the loss falls over three steps."""
  model, optimizer, tokens = Megabyte(megabyte_cfg.replace(fp8=True)), optax.sgd(0.5), _tokens()
  ref_metrics, ref_state = _reference_step(model, tokens)
  mesh = _mesh((2, 2, 2))
  shardings = state_lib.state_shardings(model, 32, optimizer, mesh)
  state = state_lib.create_train_state(model, 32, optimizer, jax.random.key(0), shardings)
  step = make_train_step(model, optimizer, 0, False, mesh=mesh, state_sharding=shardings)
  batch = sharding.shard_batch(tokens, sharding.batch_sharding(mesh))
  losses = []
  for i in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    if i == 0:
      assert losses[0] == pytest.approx(ref_metrics["loss"], rel=1e-4)
      assert float(metrics["grad_norm"]) == pytest.approx(ref_metrics["grad_norm"], rel=1e-3)
      for got, want in zip(_leaves(state.params), _leaves(ref_state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
  assert losses[2] < losses[1] < losses[0]


@needs_8
def test_parameters_and_optimizer_state_are_split_as_the_rules_say(megabyte_cfg):
  mesh = _mesh((2, 2, 2))
  model, optimizer = Megabyte(megabyte_cfg), optax.adamw(1e-3)
  shardings = state_lib.state_shardings(model, 32, optimizer, mesh)
  state = state_lib.create_train_state(model, 32, optimizer, jax.random.key(0), shardings)
  attn = state.params["global_model"]["block_0"]["attn"]
  mlp = state.params["global_model"]["block_0"]["mlp"]
  expected = {  # logical axes -> mesh axes under sharding.LOGICAL_RULES
      "qkv": (attn["qkv_kernel"], P("fsdp", None, "tensor", None), (16, 3, 1, 16)),
      "out": (attn["out_kernel"], P("tensor", None, "fsdp"), (1, 16, 16)),
      "mlp_in": (mlp["in_kernel"], P("fsdp", None, "tensor"), (16, 1, 64)),
      "mlp_out": (mlp["out_kernel"], P("tensor", "fsdp"), (64, 16)),
      # global byte embeddings of local_dim (16) with the default linear patch embedder
      "embed": (state.params["global_embed"]["embedding"], P(None, "fsdp"), (256, 8)),
      "patch_proj": (state.params["patch_embed"]["proj"]["kernel"], P(None, "fsdp"), (64, 16)),
      "global_to_local": (state.params["global_to_local"], P(None, None, "fsdp"), (32, 4, 8)),
  }
  for name, (array, spec, shard_shape) in expected.items():
    assert array.sharding.spec == spec, name
    assert array.addressable_shards[0].data.shape == shard_shape, name
  adam = state.opt_state[0]    # ScaleByAdamState: moments sharded like their parameters
  assert adam.mu["global_model"]["block_0"]["attn"]["qkv_kernel"].sharding.spec == \
      P("fsdp", None, "tensor", None)
  assert state.step.sharding.spec == P() and adam.count.sharding.spec == P()


@needs_8
def test_a_tensor_axis_that_does_not_divide_the_heads_is_refused(megabyte_cfg):
  with pytest.raises(ConfigError, match=r"global_heads=2 is not divisible by the mesh's "
                                        r"tensor axis \(4\)"):
    sharding.check_model_fits_mesh(megabyte_cfg, _mesh((2, 1, 4)))
  sharding.check_model_fits_mesh(megabyte_cfg, _mesh((4, 1, 2)))   # 2 heads on 2: fine


@needs_8
def test_the_mesh_check_covers_every_level_and_the_swiglu_width(megabyte_cfg):
  """Middle levels are checked too, and SwiGLU's MLP width (`StackSpec.mlp_dim`, not
  `mlp_ratio * dim`)."""
  deep = megabyte_cfg.replace(global_heads=4, local_heads=4, patch_sizes=(2, 2), mid_dims=(32,),
                              mid_layers=(1,), mid_heads=(1,))
  with pytest.raises(ConfigError, match=r"mid_heads\[0\]=1 is not divisible"):
    sharding.check_model_fits_mesh(deep, _mesh((4, 1, 2)))
  sharding.check_model_fits_mesh(deep.replace(mid_heads=(2,)), _mesh((4, 1, 2)))
  # mlp_ratio * dim = 36 is not divisible by 8, but SwiGLU's hidden width 8 * ceil(2/3 * 36
  # / 8) = 24 is: the old check (mlp_ratio * dim) refused a model that fits.
  gelu = TransformerConfig(seq_len=32, dim=12, layers=1, heads=8, head_dim=8, mlp_ratio=3)
  with pytest.raises(ConfigError, match=r"MLP width of the model, 36, is not divisible"):
    sharding.check_model_fits_mesh(gelu, _mesh((1, 1, 8)))
  sharding.check_model_fits_mesh(gelu.replace(activation="swiglu"), _mesh((1, 1, 8)))


@needs_8
def test_decode_caches_have_their_own_axis_names_and_rules(megabyte_cfg):
  """KV caches carry `cache_*` names: by default batch over data x fsdp and heads over tensor,
  like training's tensors, and a `mesh_rules` override moves the caches alone."""
  from megabyte_jax.inference.decoding import decoder_for, state_logical_axes
  state = decoder_for(Megabyte(megabyte_cfg)).init_state(4)
  axes = state_logical_axes(state)
  mesh = _mesh((2, 2, 2))
  shardings = nn.logical_to_mesh_sharding(axes, mesh, sharding.logical_rules())
  k = shardings["global_cache"][0].k
  assert k.spec == P(("data", "fsdp"), None, "tensor", None)
  replicated = nn.logical_to_mesh_sharding(
      axes, mesh, sharding.logical_rules([("cache_heads", None), ("cache_batch", "data")]))
  assert replicated["global_cache"][0].k.spec == P("data", None, None, None)
  placed = jax.device_put(state, shardings)
  assert placed["local_cache"][0].v.sharding.spec == P(("data", "fsdp"), None, "tensor", None)


def test_indivisible_dimensions_stay_whole():
  mesh = _mesh((1, 1, 8)) if len(CPUS) >= 8 else _mesh((1, 1, 1))
  size = mesh.shape["tensor"]
  assert sharding.fit_spec(P("fsdp", None, "tensor"), (4, 3, 2), mesh) == P(
      "fsdp", None, "tensor" if 2 % size == 0 else None)
  assert sharding.fit_spec(P(("data", "fsdp")), (5,), mesh) == P(("data", "fsdp"))
  # Larger than the axis but not a multiple of it: whole too (the mesh's shape is all
  # fit_spec reads, so an abstract mesh of 2 x 2 x 8 stands in for the devices).
  mesh = jax.sharding.AbstractMesh((2, 2, 8), sharding.MESH_AXES)
  assert sharding.fit_spec(P("tensor"), (12,), mesh) == P(None)
  assert sharding.fit_spec(P("tensor"), (16,), mesh) == P("tensor")
  assert sharding.fit_spec(P("tensor"), (8,), mesh) == P("tensor")
  assert sharding.fit_spec(P(("data", "fsdp"), "tensor"), (6, 24), mesh) == P(None, "tensor")
  assert sharding.fit_spec(P(("data", "fsdp"), "tensor"), (12, 20), mesh) == P(
      ("data", "fsdp"), None)


@needs_8
@pytest.mark.parametrize("shape,dim,heads,whole", [
    ((1, 1, 8), 24, 12, "heads"),     # 12 heads on tensor = 8
    ((1, 8, 1), 20, 2, "embed")])     # a width of 20 on fsdp = 8
def test_parameters_whose_dimension_the_axis_does_not_divide_are_placed_whole(
    shape, dim, heads, whole):
  """A model whose head count or width is larger than its mesh axis but no multiple of it:
  those dimensions stay whole, the others are split, and the parameters are placed."""
  model = ByteTransformer(TransformerConfig(seq_len=32, dim=dim, layers=1, heads=heads))
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
  mesh = _mesh(shape)
  shardings = sharding.param_shardings(boxed["params"], mesh)
  attn = shardings["model"]["block_0"]["attn"]
  mlp = shardings["model"]["block_0"]["mlp"]
  if whole == "heads":   # qkv_kernel [embed, 3, heads, kv]; the MLP's 96 units split
    assert attn["qkv_kernel"].spec == P("fsdp", None, None, None)
    assert mlp["in_kernel"].spec == P("fsdp", None, "tensor")
  else:                  # embed axes whole, heads (2 on tensor = 1) as the rules say
    assert attn["qkv_kernel"].spec == P(None, None, "tensor", None)
    assert shardings["embed"]["embedding"].spec == P(None, None)
  params = jax.tree_util.tree_map(
      lambda x: np.arange(np.prod(x.shape), dtype=np.float32).reshape(x.shape),
      nn.meta.unbox(boxed["params"]))
  placed = jax.device_put(params, shardings)
  for got, want in zip(jax.tree_util.tree_leaves(placed), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(got), want)


@needs_8
def test_checkpoint_written_under_one_mesh_restores_under_another(tmp_path, megabyte_cfg):
  model, optimizer = Megabyte(megabyte_cfg), optax.adamw(1e-3)
  first, second = _mesh((8, 1, 1)), _mesh((2, 2, 2))
  sh1 = state_lib.state_shardings(model, 32, optimizer, first)
  state = state_lib.create_train_state(model, 32, optimizer, jax.random.key(3), sh1)
  checkpointer = Checkpointer(str(tmp_path), save_every=1)
  checkpointer.save(0, state, force=True)
  checkpointer.close()
  sh2 = state_lib.state_shardings(model, 32, optimizer, second)
  restored = Checkpointer(str(tmp_path)).restore(
      state_lib.abstract_train_state(model, 32, optimizer, sh2), 0)
  for got, want, target in zip(jax.tree_util.tree_leaves(restored),
                               jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(sh2)):
    assert got.sharding == target
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("kind,remat", [("megabyte", "none"), ("megabyte", "full"),
                                        ("megabyte", "dots"), ("megabyte", "dots_no_batch"),
                                        ("transformer", "full")])
def test_remat_and_scan_compute_the_same_loss_and_gradients(kind, remat, megabyte_cfg,
                                                           transformer_cfg):
  base = megabyte_cfg if kind == "megabyte" else transformer_cfg
  cls = Megabyte if kind == "megabyte" else ByteTransformer
  stacks = ("global_model", "local_model") if kind == "megabyte" else ("model",)
  tokens = jnp.asarray(_tokens(2, 32, seed=1), jnp.int32)
  params = nn.meta.unbox(cls(base).init(jax.random.key(0), tokens))["params"]

  def loss_and_grads(cfg, p):
    model = cls(cfg)
    loss = lambda p: model.apply({"params": p}, tokens).mean()
    return jax.jit(jax.value_and_grad(loss))(p)   # jitted: op by op it took minutes

  ref_loss, ref_grads = loss_and_grads(base, params)
  loss, grads = loss_and_grads(base.replace(remat=remat), params)
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
  for got, want in zip(_leaves(grads), _leaves(ref_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  stacked = dict(params)
  for name in stacks:
    layers = base.global_layers if name == "global_model" else (
        base.local_layers if name == "local_model" else base.layers)
    stacked[name] = stack_block_params(params[name], layers)
  loss, grads = loss_and_grads(base.replace(remat=remat, scan_layers=True), stacked)
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
  ref_stacked = dict(ref_grads)
  for name in stacks:
    ref_stacked[name] = stack_block_params(ref_grads[name], len(
        [k for k in ref_grads[name] if k.startswith("block_")]))
  for got, want in zip(_leaves(grads), _leaves(ref_stacked)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_scanned_parameters_carry_a_layers_axis(megabyte_cfg):
  model = Megabyte(megabyte_cfg.replace(scan_layers=True))
  boxed = state_lib.boxed_abstract_params(model, 32)
  qkv = boxed["global_model"]["blocks"]["block"]["attn"]["qkv_kernel"]
  assert qkv.names == ("layers", "embed", None, "heads", "kv")
  assert qkv.value.shape == (2, 32, 3, 2, 16)


def test_resume_may_change_remat_but_not_the_parameter_layout(tmp_path):
  config = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                       global_heads=2, local_dim=16, local_layers=1, local_heads=2)
  save_config(str(tmp_path), config)
  changed = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                        global_heads=2, local_dim=16, local_layers=1, local_heads=2,
                        remat="full", dtype="bfloat16")
  assert resolve_config(str(tmp_path), changed) is changed
  changed.model.scan_layers = True
  with pytest.raises(ConfigError, match="scan_layers"):
    resolve_config(str(tmp_path), changed)


@needs_8
def test_training_cli_runs_on_a_mesh_and_resumes_on_another(tmp_path, corpus):
  config = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                       global_heads=2, local_dim=16, local_layers=1, local_heads=2)
  config.data.update(files=corpus, eval_fraction=0.25)
  config.train.update(steps=4, warmup_steps=1, batch_size=8, checkpoint_every=2,
                      eval_every=0, final_eval=False, tensorboard=False)
  config.sample.num_bytes = 0
  config.mesh.update(data=2, fsdp=2, tensor=2)
  workdir = str(tmp_path / "run")
  assert train_and_evaluate(config, workdir)["step"] == 4
  config.train.steps = 6
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  assert train_and_evaluate(config, workdir)["step"] == 6
  config.mesh.update(data=3, fsdp=-1)
  with pytest.raises(ConfigError, match="cannot fill 8 devices"):
    train_and_evaluate(config, workdir)
  config.mesh.update(data=8, fsdp=1)
  config.train.batch_size = 12
  with pytest.raises(ConfigError, match=r"batch_size=12 must be a multiple of the mesh's "
                                        r"data x fsdp size \(8"):
    train_and_evaluate(config, workdir)


def test_logical_rules_override_or_extend_the_default_table():
  rules = sharding.logical_rules([("mlp", None), ("embed", ["data", "fsdp"]),
                                  ("experts", "tensor")])
  assert [name for name, _ in rules] == [name for name, _ in sharding.LOGICAL_RULES] + [
      "experts"]                                 # replaced where they stand, new ones last
  assert dict(rules)["mlp"] is None and dict(rules)["embed"] == ("data", "fsdp")
  assert dict(rules)["heads"] == "tensor" and dict(rules)["experts"] == "tensor"
  assert sharding.logical_rules(None) == sharding.logical_rules(()) == sharding.LOGICAL_RULES
  for overrides, message in [
      ([("mlp", "model")], r"mesh_rules: 'mlp' maps to unknown mesh axis 'model'; the axes "
                           r"are \['data', 'fsdp', 'tensor'\]"),
      ([("mlp", ("data", "pipe"))], "unknown mesh axis 'pipe'"),
      ([("mlp", ("data", "data"))], "names a mesh axis twice"),
      ([("mlp", 3)], "must map to a mesh axis name"),
      ([("mlp", None), ("mlp", "tensor")], "'mlp' is given twice"),
      (["mlp"], r"entries must be \(logical_name, mesh_axis\) pairs"),
      ([("mlp", None, "x")], "pairs")]:
    with pytest.raises(ConfigError, match=message) as info:
      sharding.logical_rules(overrides)
    assert "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="mesh_rules must be a list"):
    config_checks.check_mesh_rules("mlp")


def _small_config(corpus=None):
  config = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                       global_heads=2, local_dim=16, local_layers=1, local_heads=2)
  config.data.update(files=corpus or "stdlib", eval_fraction=0.25)
  config.train.update(steps=2, warmup_steps=1, batch_size=8, checkpoint_every=2, log_every=1,
                      eval_every=0, final_eval=False, tensorboard=False)
  config.sample.num_bytes = 0
  return config


def _mlp_shardings(setup):
  """The mesh axes of every parameter dimension named `mlp`, over the whole model."""
  boxed = state_lib.boxed_abstract_params(setup.model, setup.model_cfg.seq_len)
  found = []
  for leaf, named in zip(
      jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)),
      jax.tree_util.tree_leaves(setup.state_sharding.params)):
    spec = tuple(named.spec) + (None,) * (len(leaf.names) - len(named.spec))
    found += [axes for name, axes in zip(leaf.names, spec) if name == "mlp"]
  return found


@needs_8
def test_mesh_rules_from_the_config_change_the_shardings_and_training_runs(tmp_path, corpus):
  """`config.mesh_rules` reaches the state shardings, the train step and evaluation: a rule
  that replicates `mlp` keeps the MLP's hidden units whole on a tensor-parallel mesh."""
  config = _small_config(corpus)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  default = TrainSetup.create(config)
  assert default.rules == sharding.LOGICAL_RULES
  assert _mlp_shardings(default) and all(axes == "tensor" for axes in _mlp_shardings(default))
  config.mesh_rules = (("mlp", None),)
  setup = TrainSetup.create(config)
  assert dict(setup.rules)["mlp"] is None
  assert _mlp_shardings(setup) and all(axes is None for axes in _mlp_shardings(setup))
  config.train.final_eval = True
  workdir = str(tmp_path / "run")
  result = train_and_evaluate(config, workdir)
  assert result["step"] == 2 and result["eval_bytes"] > 0
  assert load_config(workdir).mesh_rules == (("mlp", None),)   # saved, read back as pairs
  config.mesh_rules = (("mlp", "model"),)
  with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
    train_and_evaluate(config, str(tmp_path / "other"))
  assert not (tmp_path / "other").exists()          # refused before anything is written


@needs_8
def test_the_batch_checks_follow_the_mesh_and_the_rules():
  mesh = _mesh((2, 4, 1))
  config = _small_config()
  config.train.batch_size = 2
  with pytest.raises(ConfigError, match=r"train\.batch_size=2 must be a multiple of the "
                                        r"mesh's data x fsdp size \(8, mesh"):
    config_checks.check_batch(config.train, mesh)
  batch_on_data = sharding.logical_rules([("activation_batch", "data")])
  assert config_checks.check_batch(config.train, mesh, batch_on_data) == 1
  config.train.update(batch_size=16, grad_accum_steps=4)
  with pytest.raises(ConfigError, match=r"into train\.grad_accum_steps=4 microbatches that "
                                        r"are each a multiple of the mesh's data x fsdp size "
                                        r"\(8\)"):
    config_checks.check_batch(config.train, mesh)
  assert config_checks.check_batch(config.train, mesh, batch_on_data) == 4
  with pytest.raises(ConfigError, match=r"batch_size=16 must be a multiple of the number of "
                                        r"hosts \(3\)"):
    config_checks.check_batch(config.train, mesh, process_count=3)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(workdir, steps, corpus):
  """Starts the two processes of a `jax.distributed` run of `helpers/distributed_train.py`."""
  port = _free_port()
  procs = []
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  for i in range(2):   # the suite's XLA flags (conftest), with 2 devices per process
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i),
               XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=2"]),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "helpers", "distributed_train.py"),
         workdir, str(steps), os.path.join(corpus, "**", "*.py")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _run_processes(workdir, steps, corpus):
  procs = _start_processes(workdir, steps, corpus)
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads([l for l in out.splitlines() if l.startswith("{")][-1]))
  return results


def _logged_past(workdir, step):
  """Whether `metrics.jsonl` of `workdir` holds a training record past `step`."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    lines = [l for l in f.read().split("\n")[:-1] if l]       # complete lines only
  return any(json.loads(l).get("step", 0) > step and "train_bpb" in json.loads(l)
             for l in lines)


def test_two_processes_train_together_agree_and_stop_together_on_a_sigterm(tmp_path, corpus):
  """`jax.distributed` on localhost: 2 processes x 2 CPU devices, one 4-device mesh, train
  together and agree. Then one process of the resumed run is preempted: all agree on a step
  boundary (a multiple of `loop.STOP_SYNC_EVERY`), save it together, exit 143, and the run
  resumes from there, both processes agreeing again."""
  import signal   # pylint: disable=import-outside-toplevel
  import time     # pylint: disable=import-outside-toplevel
  from megabyte_jax.training.loop import STOP_SYNC_EVERY  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  first = _run_processes(workdir, 4, corpus)
  assert [r["process"] for r in first] == [0, 1]
  assert all(r["processes"] == 2 and r["devices"] == 4 and r["step"] == 4 for r in first)
  assert first[0]["train_bpb"] == first[1]["train_bpb"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  procs = _start_processes(workdir, 100_000, corpus)   # both processes resume from step 4
  deadline = time.time() + 300
  while not _logged_past(workdir, 4):                  # training has begun again
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)                # only the second process is signalled
  stopped = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    stopped.append(json.loads([l for l in out.splitlines() if l.startswith("{")][-1]))
  step = stopped[0]["stopped_at"]
  assert stopped[1]["stopped_at"] == step and step % STOP_SYNC_EVERY == 0 and step > 4
  assert str(step) in os.listdir(os.path.join(workdir, "checkpoints"))
  resumed = _run_processes(workdir, step + 2, corpus)
  assert all(r["step"] == step + 2 for r in resumed)
  assert resumed[0]["train_bpb"] == resumed[1]["train_bpb"]
