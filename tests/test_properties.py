"""Property-based tests (hypothesis): bad input of every kind gets one clear error."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from megabyte_jax import ConfigError, InputError, Megabyte, MegabyteConfig, generate
from megabyte_jax.inputs import check_tokens
from megabyte_jax.sampling import check_sampling_options

VALID = dict(seq_len=32, patch_size=4, global_dim=32, global_layers=1, global_heads=2,
             local_dim=16, local_layers=1, local_heads=2)
POSITIVE_INTS = ["seq_len", "patch_size", "global_dim", "global_layers", "global_heads",
                 "local_dim", "local_layers", "local_heads", "mlp_ratio"]
NOT_POSITIVE = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True),
                         st.text(max_size=3), st.none())
CHOICES = {"dtype": ("float32", "bfloat16", "float16"), "param_dtype": ("float32", "bfloat16",
                                                                         "float16"),
           "activation": ("gelu", "relu", "swiglu"), "norm": ("layernorm", "rmsnorm"),
           "attention_impl": ("auto", "xla", "cudnn"),
           "remat": ("none", "full", "dots", "dots_no_batch")}


@st.composite
def invalid_config(draw):
  """A valid config with one field broken, and the field's name."""
  kind = draw(st.sampled_from(["int", "choice", "rate", "divides"]))
  values = dict(VALID)
  if kind == "int":
    field = draw(st.sampled_from(POSITIVE_INTS))
    values[field] = draw(NOT_POSITIVE)
  elif kind == "choice":
    field = draw(st.sampled_from(sorted(CHOICES)))
    values[field] = draw(st.text(max_size=8).filter(lambda s: s not in CHOICES[field]))
  elif kind == "rate":
    field = draw(st.sampled_from(["dropout", "embed_dropout"]))
    values[field] = draw(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0),
                                   st.just(float("nan")), st.text(max_size=2)))
  else:   # seq_len or global_dim not a multiple of patch_size
    field = draw(st.sampled_from(["seq_len", "global_dim"]))
    values[field] = draw(st.integers(1, 500).filter(lambda n: n % 4))
  return field, values


@settings(max_examples=200, deadline=None)
@given(invalid_config())
def test_every_invalid_config_raises_one_clear_error_naming_the_field(case):
  field, values = case
  with pytest.raises(ConfigError) as info:
    MegabyteConfig(**values)
  assert field in str(info.value)
  assert "\n" not in str(info.value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10).filter(
    lambda k: k not in {f.name for f in dataclasses.fields(MegabyteConfig)}),
    st.integers(), min_size=1, max_size=3))
def test_unknown_config_fields_are_named(extra):
  with pytest.raises(ConfigError, match="unknown MegabyteConfig field"):
    MegabyteConfig.from_dict({**VALID, **extra})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=40), st.integers(1, 3))
def test_token_arrays_are_accepted_exactly_when_valid(values, rows):
  tokens = np.asarray(values * rows, np.int64).reshape(rows, len(values))
  ok = all(0 <= v <= 255 for v in values) and len(values) % 4 == 0 and len(values) <= 32
  if ok:
    check_tokens(tokens, 4, 32)
  else:
    with pytest.raises(InputError):
      check_tokens(tokens, 4, 32)


_MODEL = Megabyte(MegabyteConfig(**VALID))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(-300, 600), max_size=12),
       st.one_of(st.floats(-2, 2), st.just(float("nan"))),
       st.one_of(st.none(), st.integers(-3, 300)), st.one_of(st.none(), st.floats(-1, 2)))
def test_generate_refuses_bad_prompts_and_options_before_any_work(prompt, temperature, top_k,
                                                                  top_p):
  bad_prompt = any(not 0 <= b <= 255 for b in prompt)
  bad_options = (not temperature >= 0) or (top_k is not None and not 1 <= top_k <= 256) or (
      top_p is not None and not 0 < top_p <= 1)
  if not (bad_prompt or bad_options):
    check_sampling_options(temperature, top_k, top_p)
    return
  with pytest.raises(InputError):
    generate(_MODEL, {"params": {}}, np.asarray([prompt], np.int64).reshape(1, -1), 4,
             jax.random.key(0), temperature=temperature, top_k=top_k, top_p=top_p)
