"""The NNX wrapper (`megabyte_jax.nnx_bridge`): same logits as the linen modules, the same
parameter tree with its logical axis names, and a round trip back to linen variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from megabyte_jax import ByteTransformer, InputError, Megabyte, MegabyteConfig, generate
from megabyte_jax.nnx_bridge import linen_variables, load_linen_variables, to_nnx

CFG = MegabyteConfig(seq_len=16, patch_size=4, global_dim=16, global_layers=1, global_heads=2,
                     local_dim=8, local_layers=1, local_heads=2)


def _tokens(seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (2, 16)), jnp.int32)


@pytest.mark.parametrize("kind", ["megabyte", "megabyte_three_level", "transformer"])
def test_nnx_module_gives_the_linen_logits(kind, transformer_cfg):
  if kind == "transformer":
    model = ByteTransformer(transformer_cfg.replace(seq_len=16))
  elif kind == "megabyte":
    model = Megabyte(CFG)
  else:
    model = Megabyte(CFG.replace(patch_size=8, global_dim=32, patch_sizes=(2, 4),
                                 mid_dims=(8,), mid_layers=(1,), mid_heads=(2,)))
  tokens = _tokens()
  variables = model.init(jax.random.key(5), tokens)
  module = to_nnx(model, variables)
  np.testing.assert_array_equal(np.asarray(module(tokens)),
                                np.asarray(model.apply(variables, tokens)))


def test_parameters_keep_their_tree_and_axis_names():
  module = to_nnx(Megabyte(CFG), rngs=nnx.Rngs(0))
  state = nnx.state(module, nnx.Param)
  assert state["global_model"]["block_0"]["attn"]["qkv_kernel"].get_value().shape == (16, 3, 2, 8)
  assert state["global_embed"]["embedding"].get_metadata()["out_sharding"] == ("vocab", "embed")
  specs = nnx.get_partition_spec(state)
  assert tuple(specs["local_pad"].get_value()) == ("embed",)


def test_round_trip_to_linen_variables_and_generation():
  model = Megabyte(CFG)
  tokens = _tokens(1)
  module = to_nnx(model, rngs=nnx.Rngs(3))              # freshly initialized in NNX
  variables = linen_variables(module)
  np.testing.assert_array_equal(np.asarray(model.apply(variables, tokens)),
                                np.asarray(module(tokens)))
  out = generate(model, variables, np.asarray(tokens[:, :3]), 5, jax.random.key(0))
  assert out.shape == (2, 8)
  # Loading other parameters into the same module changes its outputs to theirs.
  other = model.init(jax.random.key(9), tokens)
  load_linen_variables(module, other)
  np.testing.assert_array_equal(np.asarray(module(tokens)),
                                np.asarray(model.apply(other, tokens)))


def test_dropout_and_jit_through_nnx():
  model = Megabyte(CFG.replace(dropout=0.5))
  tokens = _tokens(2)
  variables = model.init(jax.random.key(0), tokens)
  module = to_nnx(model, variables)
  plain = np.asarray(module(tokens))
  dropped = np.asarray(module(tokens, deterministic=False, rngs=nnx.Rngs(dropout=1)))
  assert np.abs(plain - dropped).max() > 1e-3
  jitted = nnx.jit(lambda m, t: m(t))(module, tokens)
  np.testing.assert_allclose(np.asarray(jitted), plain, rtol=1e-5, atol=1e-5)


def test_loading_mismatched_variables_is_refused():
  module = to_nnx(Megabyte(CFG))
  bigger = Megabyte(CFG.replace(local_dim=16)).init(jax.random.key(0), _tokens())
  with pytest.raises(InputError, match="has shape"):
    load_linen_variables(module, bigger)
  params = linen_variables(module)["params"]
  with pytest.raises(InputError, match="missing from the variables"):
    load_linen_variables(module, {k: v for k, v in params.items() if k != "head"})
  with pytest.raises(InputError, match="not in the NNX module"):
    load_linen_variables(module, {**params, "extra": jnp.zeros(3)})
