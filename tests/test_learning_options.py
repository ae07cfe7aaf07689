"""The learning options of issue 20 (MEGABYTE-pytorch comparison): token shift, the full
global-to-local projection, the linear patch embedder, the sequence-wide byte shift, the
embedding init and the weight-decay mask by role; and checkpoints written before them."""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megabyte_jax import ByteTransformer, Megabyte, MegabyteConfig, TransformerConfig
from megabyte_jax.config import LEGACY_MEGABYTE_DEFAULTS, PAPER_FORMULATION
from megabyte_jax.layers import token_shift
from megabyte_jax.training.train_state import decay_mask, decay_role
from megabyte_jax.training.workdir import load_config, load_trained, resolve_config

LEGACY_RUN = os.path.join(os.path.dirname(__file__), "data", "legacy_run_2026_11")
CFG = MegabyteConfig(seq_len=32, patch_size=4, global_dim=32, global_layers=1, global_heads=2,
                     local_dim=16, local_layers=2, local_heads=2)


def test_token_shift_moves_the_second_half_one_position():
  """Position t keeps its first ceil(d/2) features and takes the rest from t-1 (zeros, or
  the given previous row, at t = 0)."""
  x = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5)
  y = np.asarray(token_shift(x))
  np.testing.assert_array_equal(y[:, :, :3], x[:, :, :3])
  np.testing.assert_array_equal(y[:, 1:, 3:], x[:, :-1, 3:])
  np.testing.assert_array_equal(y[:, 0, 3:], 0)
  prev = jnp.full((2, 2), 7.0)
  np.testing.assert_array_equal(np.asarray(token_shift(x, prev))[:, 0, 3:], 7.0)


def test_sequence_byte_shift_gives_the_local_model_the_previous_patchs_last_byte():
  """With byte_shift="sequence" the first byte of a patch is predicted with the byte before
  it as local input; with the paper's "patch" only through the global model. Zeroing the
  global-to-local projection isolates the local path."""
  tokens = np.random.default_rng(0).integers(0, 256, (1, 32)).astype(np.int32)
  changed = tokens.copy()
  changed[0, 7] = (changed[0, 7] + 1) % 256            # the last byte of patch 1
  for shift, moves in (("sequence", True), ("patch", False)):
    cfg = CFG.replace(byte_shift=shift, token_shift=False)
    model = Megabyte(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.asarray(tokens)))["params"]
    params["global_to_local"] = jnp.zeros_like(params["global_to_local"])
    before = np.asarray(model.apply({"params": params}, tokens))
    after = np.asarray(model.apply({"params": params}, changed))
    assert (np.abs(before[0, 8] - after[0, 8]).max() > 1e-6) == moves, shift
    np.testing.assert_array_equal(before[0, :8], after[0, :8])


def test_full_projection_gives_each_local_position_the_whole_global_output():
  """"full": every local position of patch k reads every feature of global output k;
  "slice" (the paper): position p reads only slice p."""
  g = jax.random.normal(jax.random.key(0), (1, 1, 8))
  from megabyte_jax.models.megabyte import project_to_children
  w_full = jax.random.normal(jax.random.key(1), (8, 4, 3))
  w_slice = jax.random.normal(jax.random.key(2), (2, 3))
  bump = g.at[0, 0, 0].add(1.0)                        # a feature of slice 0 only
  full = project_to_children(bump, w_full, 4, "full", jnp.float32) - \
      project_to_children(g, w_full, 4, "full", jnp.float32)
  part = project_to_children(bump, w_slice, 4, "slice", jnp.float32) - \
      project_to_children(g, w_slice, 4, "slice", jnp.float32)
  assert np.all(np.abs(np.asarray(full)) > 0)
  assert np.abs(np.asarray(part[0, 0, 0])).max() > 0
  np.testing.assert_array_equal(np.asarray(part[0, 0, 1:]), 0)


def test_each_child_position_reads_its_own_slice_or_the_whole_output():
  """"slice": child position p of unit k is slice p of output k (features p*W/S ..
  (p+1)*W/S - 1) times the shared `w`, for every p; "full": the whole output k times
  `w[:, p]`."""
  from megabyte_jax.models.megabyte import project_to_children
  s, width, child = 4, 12, 5
  g = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, width)))   # [batch, n, W]
  w_slice = np.asarray(jax.random.normal(jax.random.key(1), (width // s, child)))
  w_full = np.asarray(jax.random.normal(jax.random.key(2), (width, s, child)))
  sliced = np.asarray(project_to_children(g, w_slice, s, "slice", jnp.float32))
  full = np.asarray(project_to_children(g, w_full, s, "full", jnp.float32))
  assert sliced.shape == full.shape == (2, 3, s, child)
  part = width // s
  for p in range(s):
    np.testing.assert_allclose(sliced[..., p, :], g[..., p * part:(p + 1) * part] @ w_slice,
                               rtol=1e-5, atol=1e-5, err_msg=f"slice {p}")
    np.testing.assert_allclose(full[..., p, :], g @ w_full[:, p], rtol=1e-5, atol=1e-5,
                               err_msg=f"full {p}")


@pytest.mark.parametrize("std", [1.0, 0.02])
def test_embed_init_std_sets_the_scale_of_embeddings_positions_and_pads(std):
  params = nn.meta.unbox(Megabyte(CFG.replace(embed_init_std=std, positions="learned")).init(
      jax.random.key(0), jnp.zeros((1, 32), jnp.int32)))["params"]
  for leaf in (params["local_embed"]["embedding"], params["global_embed"]["embedding"],
               params["global_pos"], params["local_pos"]):
    assert np.std(np.asarray(leaf)) == pytest.approx(std, rel=0.25)
  assert np.std(np.asarray(params["global_pad"])) == pytest.approx(std, rel=0.5)


def test_defaults_follow_the_learning_comparison_and_the_paper_stays_selectable():
  """MEGABYTE defaults to the comparison's winners; the byte Transformer keeps N(0, 0.02)
  embeddings (N(0, 1) learned far worse there, RESULTS.md)."""
  assert (CFG.embed_init_std, CFG.token_shift, CFG.global_to_local, CFG.patch_embed,
          CFG.byte_shift) == (1.0, True, "full", "linear", "sequence")
  paper = CFG.replace(**PAPER_FORMULATION)
  assert (paper.token_shift, paper.global_to_local, paper.patch_embed, paper.byte_shift) == (
      False, "slice", "concat", "patch")
  t = TransformerConfig(seq_len=32, dim=16, layers=1, heads=2)
  assert t.embed_init_std == 0.02 and not t.token_shift


def test_weight_decay_mask_by_role():
  """Dense kernels are decayed; biases of any shape, norms, pads (and embeddings unless
  asked) are not, also with `scan_layers` (a leading layer axis on every parameter)."""
  for cfg in (CFG.replace(positions="learned"),
              CFG.replace(positions="learned", scan_layers=True)):
    params = nn.meta.unbox(Megabyte(cfg).init(jax.random.key(0),
                                              jnp.zeros((1, 32), jnp.int32)))["params"]
    flat = jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    decayed = {"/".join(str(k.key) for k in path) for path, on in flat if on}
    assert any(p.endswith("qkv_kernel") for p in decayed)
    assert "global_to_local" in decayed and "head/kernel" in decayed
    assert "patch_embed/proj/kernel" in decayed
    assert not any("bias" in p or "norm" in p or "pad" in p or "embedding" in p
                   or p.endswith("_pos") for p in decayed)
    with_embeddings = jax.tree_util.tree_flatten_with_path(
        decay_mask(params, "kernels_embeddings"))[0]
    assert {"/".join(str(k.key) for k in path) for path, on in with_embeddings if on} == (
        decayed | {"global_embed/embedding", "local_embed/embedding", "global_pos",
                   "local_pos"})
  legacy = jax.tree_util.tree_leaves(decay_mask({"qkv_bias": jnp.zeros((3, 2, 4))}, "ndim"))
  assert legacy == [True]                   # the old rule decayed this bias
  assert [decay_role(n) for n in ("in_kernel", "level_1_to_local", "pos", "scale")] == [
      "kernel", "kernel", "embedding", "other"]


def test_a_checkpoint_from_before_the_new_options_still_loads_and_computes_the_same(
    tmp_path):
  """A run written by the code of 2026-11 (tests/data/legacy_run_2026_11, the tiny config,
  4 steps: config.json without the new fields, weight decay by ndim) loads with the model
  of then and gives the logits that code gave (saved beside it)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(LEGACY_RUN, workdir)
  config = load_config(workdir)
  for key, value in LEGACY_MEGABYTE_DEFAULTS.items():
    assert config.model[key] == value
  assert config.train.weight_decay_mask == "ndim"
  loaded = load_trained(workdir)
  model, params, step = loaded.model, loaded.params, loaded.step
  assert step == 4
  text = open(os.path.join(LEGACY_RUN, "expected_input.bin"), "rb").read()
  tokens = np.frombuffer(text, np.uint8).astype(np.int32)[None]
  logits = np.asarray(model.apply({"params": params}, tokens))
  np.testing.assert_allclose(logits, np.load(os.path.join(LEGACY_RUN, "expected_logits.npy")),
                             rtol=1e-5, atol=1e-5)


def test_resuming_an_old_run_with_todays_config_names_the_changed_fields(tmp_path):
  """Passing a config of today's defaults to an old run is refused, naming the changes."""
  from megabyte_jax.errors import ConfigError
  workdir = str(tmp_path / "run")
  shutil.copytree(LEGACY_RUN, workdir)
  config = load_config(workdir)
  for key in LEGACY_MEGABYTE_DEFAULTS:
    config.model[key] = getattr(CFG, key)
  with pytest.raises(ConfigError) as err:
    resolve_config(workdir, config)
  assert "model.token_shift: False -> True" in str(err.value)
  assert "model.patch_embed: 'concat' -> 'linear'" in str(err.value)


@pytest.mark.parametrize("patch_size", [2, 4, 5, 8])
def test_patch_strided_windows_score_every_byte_once_in_the_first_half_of_a_patch(
    patch_size):
  """The paper's strided inference: pass A from byte 0, pass B from byte ceil(P/2); each
  byte scored exactly once, always at a position in the first half of a patch."""
  from megabyte_jax.inference.scoring import patch_strided_windows
  seq_len = 4 * patch_size
  docs = [np.arange(1, n + 1) % 251 + 1 for n in (1, 7, seq_len, 3 * seq_len + 3)]
  windows = patch_strided_windows([d.astype(np.uint8) for d in docs], seq_len, patch_size)
  first = -(-patch_size // 2)
  scored = []
  row = 0
  for doc in docs:
    for offset, keep in ((0, first), (first, patch_size - first)):
      for start in range(0, max(len(doc) - offset, 0), seq_len):
        mask = windows.mask[row]
        positions = np.nonzero(mask)[0]
        assert np.all(positions % patch_size < keep)
        np.testing.assert_array_equal(windows.tokens[row][positions],
                                      doc[offset + start + positions])
        scored += list(offset + start + positions)
        row += 1
    assert sorted(scored) == list(range(len(doc)))
    scored = []
  assert row == len(windows.tokens)
  assert windows.mask.sum() == sum(len(d) for d in docs)


def test_patch_strided_windows_refuse_a_byte_model():
  from megabyte_jax.errors import ConfigError
  from megabyte_jax.inference.scoring import patch_strided_windows
  with pytest.raises(ConfigError, match="patch of at least 2 bytes"):
    patch_strided_windows([np.zeros(10, np.uint8)], 32, 1)


def test_learning_ablation_driver_trains_variants_through_the_cli(tmp_path):
  """`experiments/learning_ablation.py` on a tiny config and corpus: one result row per
  variant, with the held-out bits per byte of its final evaluation; unknown names refused."""
  import json
  import sysconfig
  from experiments import learning_ablation
  corpus = tmp_path / "corpus"
  (corpus / "eval" / "pkg").mkdir(parents=True)
  stdlib = sysconfig.get_paths()["stdlib"]
  shutil.copytree(os.path.join(stdlib, "json"), corpus / "train",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(stdlib, "csv.py"), corpus / "eval" / "pkg" / "csv.py")
  results = tmp_path / "results.json"
  learning_ablation.main([f"--corpus={corpus}", "--config=experiments/configs/tiny.py",
                          "--steps=2", "--variants=base", "--seeds=0,1", "--lanes=2",
                          f"--workdir={tmp_path / 'runs'}", f"--results={results}"])
  rows = {r["name"]: r for r in json.loads(results.read_text())}
  assert set(rows) == {"base", "base@seed1"}
  for row in rows.values():
    assert row["rc"] == 0 and 0 < row["heldout_bpb"] < 9, row
  assert rows["base"]["overrides"]["model.embed_init_std"] == 0.02
  for name, seed in (("base", 0), ("base@seed1", 1)):   # each run trained with its seed
    saved = json.loads((tmp_path / "runs" / name / "config.json").read_text())
    assert saved["seed"] == seed == rows[name]["seed"]
  assert rows["base"]["heldout_bpb"] != rows["base@seed1"]["heldout_bpb"]
  with pytest.raises(SystemExit, match="unknown variant"):
    learning_ablation.main([f"--corpus={corpus}", "--variants=nope"])


def test_previous_units_pad_each_parent_unit_or_only_the_sequence_start():
  """`previous_units`: "patch" puts the pad at unit 0 of every parent unit; "sequence" only at
  the first unit of the sequence, unit 0 of later parents taking the unit before."""
  from megabyte_jax.models.megabyte import previous_units
  units = jnp.arange(1, 2 * 3 + 1, dtype=jnp.int32).reshape(1, 6, 1)   # [1, n*S = 6, U = 1]
  previous, pad = previous_units(units, 3, False)
  np.testing.assert_array_equal(np.asarray(previous)[0, :, 0], [0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(np.asarray(pad), [1, 0, 0, 1, 0, 0])
  previous, pad = previous_units(units, 3, True)
  np.testing.assert_array_equal(np.asarray(previous)[0, :, 0], [0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(np.asarray(pad), [1, 0, 0, 0, 0, 0])
