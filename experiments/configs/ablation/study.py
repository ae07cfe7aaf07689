"""Ablation of MEGABYTE's variants at equal training FLOPs (issue 10): the base model, the
convolutional patch encoder, cross-patch attention, and a 3-level hierarchy.

    python -m experiments.study --study=experiments.configs.ablation.study \\
        --results=experiments/results/ablation --time_limit_s=600
    python -m experiments.study --study=experiments.configs.ablation.study:cpu \\
        --results=/tmp/ablation_cpu                          # a few minutes on a CPU
    python -m megabyte_jax.train --config=experiments/configs/ablation/conv.py --workdir=W
                                  # one model alone, on the default data (stdlib sources)

(from the repository root; the file path, experiments/configs/ablation/study.py, also works
as --study).

Corpus, context, batch and optimiser are those of `experiments.studies.code_equal_compute`
(the experiments issue): `.py` files of the installed packages, whole packages held out for
validation, 2,048-byte windows, batch 32, AdamW at 1.5e-3 with 5% warmup and cosine decay,
bf16 compute. The study driver gives every model the same training FLOPs
(`megabyte_jax.flops.model_cost`, which counts every variant) and the same stream of bytes.

Models (`MODELS`; each also a train config in this directory: base.py, conv.py,
cross_patch.py, three_level.py):

  base         code_equal_compute's megabyte-p8: global 512 x 6 over 8-byte patches
               (D_G 64), local 256 x 3 (4 heads of 64)                   30.1 MFLOP/byte
  conv         base + causal convolutions of widths 3, 5, 7 over the global byte
               embeddings (Section 2.3.1)                                30.4 MFLOP/byte
  cross_patch  base + every local layer attends to the last 4 positions of the previous
               patch, rotary positions (Section 2.3.2)                   30.1 MFLOP/byte
  three_level  global 768 x 4 over 16-byte patches (D_G 48), a middle level 512 x 3 over
               the two 8-byte halves of each patch, the same local 256 x 3   32.9 MFLOP/byte

Budgets: 5e14 FLOPs (about 16M bytes per model, roughly a minute per run on an H100 with
compilation and the full evaluation), then "auto": the largest multiple of it that the
measured speed fits into what is left of --time_limit_s.

`:cpu` is a tiny version (256-byte windows, batch 8, 1-2M parameters) that checks the
pipeline on a 2-core CPU; it says nothing about the variants.
"""

from typing import Optional

from experiments.studies import code_equal_compute
from experiments.study import spec as study_spec
from megabyte_jax.flops import model_cost
from megabyte_jax.models import build_model

_BASE = {
    "h100": dict(patch_size=8, global_dim=512, global_layers=6, global_heads=8,
                 local_dim=256, local_layers=3, local_heads=4),
    "cpu": dict(patch_size=8, global_dim=192, global_layers=2, global_heads=3,
                local_dim=64, local_layers=2, local_heads=2),
}
_THREE_LEVEL = {
    # mid_dims 448 (512 before 2026-12): the default full projections into and out of the
    # middle level cost more; 448 keeps the four models within 10% of each other's FLOPs.
    "h100": dict(patch_size=16, patch_sizes=(2, 8), global_dim=768, global_layers=4,
                 global_heads=12, mid_dims=(448,), mid_layers=(3,), mid_heads=(8,),
                 local_dim=256, local_layers=3, local_heads=4),
    "cpu": dict(patch_size=16, patch_sizes=(2, 8), global_dim=256, global_layers=2,
                global_heads=4, mid_dims=(128,), mid_layers=(1,), mid_heads=(2,),
                local_dim=64, local_layers=2, local_heads=2),
}
NAMES = ("base", "conv", "cross_patch", "three_level")


def models(variant: str = "h100") -> list:
  """The four model dicts of the ablation (study-driver format: name, kind, config fields)."""
  if variant not in _BASE:
    raise ValueError(f"variant must be one of {sorted(_BASE)}, got {variant!r}")
  base = _BASE[variant]
  return [
      dict(name="base", kind="megabyte", **base),
      # The paper's conv encoder works on the concatenated D_G-wide byte embeddings; on the
      # default linear patch embedder's local_dim-wide ones it would cost 16x more here.
      dict(name="conv", kind="megabyte", conv_kernel_sizes=(3, 5, 7), patch_embed="concat",
           **base),
      dict(name="cross_patch", kind="megabyte", cross_patch=4, **base),
      dict(name="three_level", kind="megabyte", **_THREE_LEVEL[variant]),
  ]


def get_study(variant: str = "h100") -> dict:
  """Returns the study dict (see `experiments.study`): code_equal_compute's corpus, context,
  batch, optimiser and evaluation, with this ablation's models and budgets."""
  study = code_equal_compute.get_study(variant)      # raises for an unknown variant
  study.pop("time_limit_s", None)
  study.update(name="variants_ablation" + ("_cpu" if variant == "cpu" else ""),
               budgets=[5e14, "auto"] if variant == "h100" else [2e11],
               models=models(variant))
  return study


def train_config(name: str, variant: str = "h100", budget: Optional[float] = None):
  """A `megabyte_jax.train` config of one ablation model on its own: the study driver's
  `model_config` (the study's shape and optimiser) with steps for `budget` training FLOPs
  (default: the study's first budget, 5e14 for "h100", 2e11 for "cpu"), four evaluations,
  the default data (the stdlib's sources; the study driver supplies its own corpus
  instead)."""
  study = get_study(variant)
  if budget is None:
    budget = study["budgets"][0]
  by_name = {m["name"]: m for m in study["models"]}
  if name not in by_name:
    raise ValueError(f"model must be one of {sorted(by_name)}, got {name!r}")
  _, cfg = build_model(study_spec.model_config(study, by_name[name], 1).model)
  steps = study_spec.steps_for_budget(budget, model_cost(cfg).train_flops_per_byte,
                                      study["batch_size"], study["seq_len"])
  config = study_spec.model_config(study, by_name[name], steps)
  config.train.eval_every = max(1, config.train.steps // 4)
  config.train.eval_batches = study["eval_batches"]
  config.train.checkpoint_every = config.train.steps
  config.eval.batch_size = study["eval_batch_size"]
  return config
