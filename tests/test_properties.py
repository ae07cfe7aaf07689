"""Property-based tests (hypothesis): bad input of every kind gets one clear error."""

import dataclasses
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from megabyte_jax import ConfigError, InputError, Megabyte, MegabyteConfig, generate
from megabyte_jax.inputs import check_tokens
from megabyte_jax.inference.sampling import check_sampling_options

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


# ------------------------------------------------- the sample CLI on arbitrary prompt bytes


@pytest.fixture(scope="module")
def sample_workdir(tmp_path_factory):
  """A workdir holding the VALID model as training writes it (config and a step-0
  checkpoint), with small random weights made in NumPy (no compilation);
  `megabyte_jax.sample` loads it once (its `load_trained` is cached here), so each example
  costs only the sampling."""
  from megabyte_jax import sample
  from megabyte_jax.training import train_state as state_lib
  from megabyte_jax.training.checkpoint import Checkpointer
  from megabyte_jax.experiment import base_config
  from megabyte_jax.training.workdir import save_config
  base = str(tmp_path_factory.mktemp("sample"))
  workdir = os.path.join(base, "run")
  config = base_config("megabyte", **VALID)
  save_config(workdir, config)
  optimizer = state_lib.make_optimizer(config.train)
  checkpointer = Checkpointer(workdir)
  rng = np.random.default_rng(0)
  state = jax.tree_util.tree_map(
      lambda a: (rng.normal(0, 0.1, a.shape) if jnp.issubdtype(a.dtype, jnp.floating)
                 else np.zeros(a.shape)).astype(a.dtype),
      state_lib.abstract_train_state(_MODEL, 32, optimizer))
  checkpointer.save(0, state, force=True)
  checkpointer.close()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sample, "load_trained", functools.lru_cache()(sample.load_trained))
    yield workdir, base


def _run_sample(workdir, **kwargs):
  from megabyte_jax.sample import run_sample
  stdout, stderr = io.StringIO(), io.StringIO()
  texts = run_sample(workdir, stdout=stdout, stderr=stderr, **kwargs)
  return texts, stdout.getvalue(), stderr.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.tuples(st.binary(max_size=40), st.just(0)),       # echoed as it is
                 st.tuples(st.binary(min_size=8, max_size=8), st.just(8))),   # continued
       st.booleans())
def test_any_bytes_in_a_prompt_file_are_kept_exactly(sample_workdir, case, to_file):
  """Random bytes as `--prompt_file`: the raw bytes come back in `--output`, the printed
  text is their UTF-8 reading with U+FFFD for invalid bytes, and a prompt too long for the
  model (seq_len=32) is one clear InputError."""
  from megabyte_jax.sample import run_sample
  workdir, base = sample_workdir
  prompt, num_bytes = case
  path, out = os.path.join(base, "prompt.bin"), os.path.join(base, "out.bin")
  with open(path, "wb") as f:
    f.write(prompt)
  output = out if to_file else None
  if len(prompt) + num_bytes > 32:
    with pytest.raises(InputError, match="more than the model's context of seq_len=32") as e:
      run_sample(workdir, prompt_file=path, num_bytes=num_bytes, output=output)
    assert "\n" not in str(e.value)
    return
  texts, printed, said = _run_sample(workdir, prompt_file=path, num_bytes=num_bytes,
                                     output=output)
  assert len(texts) == 1 and len(texts[0]) == len(prompt) + num_bytes
  assert texts[0][:len(prompt)] == prompt
  if to_file:
    with open(out, "rb") as f:
      assert f.read() == texts[0]
    assert printed == "" and said == f"wrote {len(texts[0])} bytes to {out}\n"
  else:
    assert printed == texts[0].decode("utf-8", errors="replace") + "\n"
    try:
      prompt.decode("utf-8")
    except UnicodeDecodeError:
      assert "\ufffd" in printed


SURROGATES = st.sampled_from([chr(c) for c in (0xD800, 0xDBFF, 0xDC80, 0xDCFF, 0xDFFF)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=24).map(lambda b: b.decode("utf-8", "surrogateescape")),
                 st.text(max_size=12),
                 st.text(alphabet=st.one_of(st.characters(), SURROGATES), max_size=6)))
def test_any_prompt_text_is_taken_as_its_bytes_or_refused_in_one_line(sample_workdir, text):
  """`--prompt` text: UTF-8, except bytes that were not UTF-8 on the command line (which
  Python hands over as lone surrogates U+DC80..U+DCFF) come back as those bytes; other lone
  surrogates are one clear InputError."""
  from megabyte_jax.sample import run_sample
  workdir, _ = sample_workdir
  try:
    expected = text.encode("utf-8", "surrogateescape")
  except UnicodeEncodeError:
    with pytest.raises(InputError, match="--prompt is not text: surrogates not allowed") as e:
      run_sample(workdir, prompt=text, num_bytes=0)
    assert "\n" not in str(e.value)
    return
  if len(expected) > 32:
    with pytest.raises(InputError, match="seq_len=32"):
      run_sample(workdir, prompt=text, num_bytes=0)
    return
  texts, printed, _ = _run_sample(workdir, prompt=text, num_bytes=0)
  assert texts == [expected]
  assert printed == expected.decode("utf-8", errors="replace") + "\n"
