"""The equal-compute study on real code: byte Transformer vs MEGABYTE at P = 4, 8, 16.

    python -m experiments.study --study=code_equal_compute \\
        --results=experiments/results/code_equal_compute --time_limit_s=420
    python -m experiments.study --study=code_equal_compute:cpu ...

Corpus: the `.py` files of every package installed for the running Python (on the GPU
machine: torch, transformers, scipy, numpy, jax, ...; no download, no one here wrote them),
whole top-level packages held out for validation (~4 MB, chosen by a seeded hash of their
names, listed in results.json), copies of held-out files removed from training
(`experiments.corpus.build_package_corpus`).

Models (the paper's recipe scaled down: Section 3's point that the global model can be about
P times larger at the same FLOPs): all read 2,048-byte windows, batch 32 (65,536 bytes per
step), and cost 31-35 MFLOP per trained byte (`megabyte_jax.flops`), so at one budget they
also train on about the same number of bytes:

  transformer   width 256, 3 layers (57% of its FLOPs are attention over 2,048 bytes)
  megabyte-p4   global 384 x 6 (D_G 96), local 256 x 3
  megabyte-p8   global 512 x 6 (D_G 64), local 256 x 3
  megabyte-p16  global 768 x 6 (D_G 48), local 256 x 3

Optimiser (ours, not the paper's long-run recipe, and not tuned per model): AdamW, peak
learning rate 1.5e-3, 5% linear warmup, cosine decay to 10%, weight decay 0.1, beta2 0.95,
clipping 1.0; bf16 compute, float32 weights.

Budgets: 5e14 FLOPs (about 15M bytes per model), then "auto": the largest multiple (2-16x) of
it that the measured speed of the first four runs fits into what is left of the time limit
(420 s unless --time_limit_s says otherwise).
The resolved budget is in results.json; to rerun exactly, pass --budgets=5e14,<that>.

`:cpu` is a tiny version for a 2-core CPU (a few minutes): 256-byte windows, batch 8,
models of 0.2-2.3M parameters, 4 MB of this machine's site-packages. It proves the pipeline,
nothing about the models.
"""


def get_study(variant: str = "h100") -> dict:
  """Returns the study dict (see `experiments.study`)."""
  if variant == "h100":
    return {
        "name": "code_equal_compute",
        "corpus": {"kind": "packages", "roots": "site-packages", "eval_target_bytes": 4 << 20,
                   "max_train_bytes": 512 << 20, "max_file_bytes": 1 << 20, "seed": 0},
        "seq_len": 2048, "batch_size": 32, "eval_batch_size": 64,
        "model_defaults": {"dtype": "bfloat16", "param_dtype": "float32"},
        "train": {"learning_rate": 1.5e-3, "warmup_fraction": 0.05, "min_lr_ratio": 0.1,
                  "weight_decay": 0.1, "b2": 0.95, "grad_clip": 1.0},
        "quick_evals": 4, "eval_batches": 8,
        "budgets": [5e14, "auto"], "time_limit_s": 420,
        "models": [
            {"name": "transformer", "kind": "transformer", "dim": 256, "layers": 3,
             "heads": 4},
            {"name": "megabyte-p4", "kind": "megabyte", "patch_size": 4,
             "global_dim": 384, "global_layers": 6, "global_heads": 6,
             "local_dim": 256, "local_layers": 3, "local_heads": 4},
            {"name": "megabyte-p8", "kind": "megabyte", "patch_size": 8,
             "global_dim": 512, "global_layers": 6, "global_heads": 8,
             "local_dim": 256, "local_layers": 3, "local_heads": 4},
            {"name": "megabyte-p16", "kind": "megabyte", "patch_size": 16,
             "global_dim": 768, "global_layers": 6, "global_heads": 12,
             "local_dim": 256, "local_layers": 3, "local_heads": 4},
        ],
    }
  if variant == "cpu":
    return {
        "name": "code_equal_compute_cpu",
        "corpus": {"kind": "packages", "roots": "site-packages", "eval_target_bytes": 200_000,
                   "max_train_bytes": 4 << 20, "max_file_bytes": 1 << 20, "seed": 0},
        "seq_len": 256, "batch_size": 8, "eval_batch_size": 32,
        "model_defaults": {},
        "train": {"learning_rate": 3e-3, "warmup_fraction": 0.05, "min_lr_ratio": 0.1,
                  "weight_decay": 0.1, "b2": 0.95, "grad_clip": 1.0},
        "quick_evals": 2, "eval_batches": 4,
        "budgets": [2e11, 6e11],
        "models": [
            {"name": "transformer", "kind": "transformer", "dim": 72, "layers": 2,
             "heads": 2},
            {"name": "megabyte-p4", "kind": "megabyte", "patch_size": 4,
             "global_dim": 128, "global_layers": 2, "global_heads": 2,
             "local_dim": 64, "local_layers": 2, "local_heads": 2},
            {"name": "megabyte-p8", "kind": "megabyte", "patch_size": 8,
             "global_dim": 192, "global_layers": 2, "global_heads": 3,
             "local_dim": 64, "local_layers": 2, "local_heads": 2},
            {"name": "megabyte-p16", "kind": "megabyte", "patch_size": 16,
             "global_dim": 256, "global_layers": 2, "global_heads": 4,
             "local_dim": 64, "local_layers": 2, "local_heads": 2},
        ],
    }
  raise ValueError(f"variant must be 'h100' or 'cpu', got {variant!r}")
