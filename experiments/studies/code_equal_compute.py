"""The equal-compute study on real code: byte Transformer vs MEGABYTE at P = 4, 8, 16.

    python -m experiments.study --study=code_equal_compute \\
        --results=experiments/results/code_equal_compute --time_limit_s=420
    python -m experiments.study --study=code_equal_compute:scaling --budgets=2e15 \\
        --results=experiments/results/code_scaling
    python -m experiments.study --study=code_equal_compute:cpu ...

Corpus: the `.py` files of every package installed for the running Python (on the GPU
machine: torch, transformers, scipy, numpy, jax, ...; no download, no one here wrote them),
whole top-level packages held out for validation (~4 MB, chosen by a seeded hash of their
names, listed in results.json), copies of held-out files removed from training
(`experiments.corpus.build_package_corpus`).

Variants: `h100` (the default; one budget and an "auto" one), `scaling` (three budgets,
models sized per budget, a learning-rate sweep, the 4x-context arm) and `cpu` (a pipeline
check).

`h100`. Models (the paper's recipe scaled down: Section 3's point that the global model can
be about P times larger at the same FLOPs): all read 2,048-byte windows, batch 32 (65,536
bytes per step), and cost 31-35 MFLOP per trained byte (`megabyte_jax.flops`), so at one
budget they also train on about the same number of bytes:

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

`scaling`: where, if anywhere, does MEGABYTE overtake the byte Transformer? Budgets 2e15,
1e16 and 1e17 training FLOPs, each model sized for its budget and run only there (its
`budgets`), the package's default model settings (MEGABYTE: rotary positions; the byte
Transformer: learned positions), the optimiser of `h100` (peak learning rate `BASE_LR`).
One budget per command, the results accumulating in one folder (a finished run is kept, so
a command can be repeated after an interruption; `--models=NAME` runs one model):

    python -m experiments.study --study=code_equal_compute:scaling --budgets=2e15 \\
        --results=experiments/results/code_scaling          # 5 runs,  ~4 min on one H100
    python -m experiments.study --study=code_equal_compute:scaling --budgets=1e16 \\
        --results=experiments/results/code_scaling          # 11 runs, ~15 min
    python -m experiments.study --study=code_equal_compute:scaling --budgets=1e17 \\
        --results=experiments/results/code_scaling          # 3 runs,  ~10 min each
    python -m experiments.plot_results --results=experiments/results/code_scaling

(Times at about 170 TFLOP/s of model FLOPs, with compilation and evaluations. Runs save a
checkpoint every 1,000 steps: where a command has a time limit shorter than a run, repeat
it with `--resume` on the same machine and work root and the unfinished run continues,
e.g. `--budgets=1e17 --models=megabyte-p8-l --resume`.)

Sizes. MEGABYTE of width w and depth n: local model w x n with 8 attention heads of 64
(the peer's local attention, as `experiments/configs/peer_match.py`), global model 2n layers
of 2w at P = 8 (peer_match's 512 x 6 over 256 x 3), and of 2w sqrt(P / 8) (whole 64-wide
heads) at P = 4 and 16, which keeps the global FLOPs per byte of P = 8. (w, n) = (192, 2) at
2e15, (256, 3) at 1e16 (peer_match's shape) and (512, 6) at 1e17. The byte Transformer
(64-wide heads) has about the FLOPs per byte of MEGABYTE P = 8 at its budget: 192 x 2,
256 x 3 (peer_match's), 512 x 8. So a budget trains every model on about the same bytes,
and the bytes grow with the budget (130M, 275M, 400M: about budget^0.3, at most about one
pass over the corpus) while the rest of the compute goes into model size. The plan
(`--plan`) of the whole study:

   budget model                   context x b    params MFLOP/byte attn  peak lr   steps       MB
     2e15 transformer-s            2,048 x 32     1.38M      15.04  63%   0.0015   2,029    133.0
     2e15 megabyte-p4-s            2,048 x 32     5.09M      15.48  10%   0.0015   1,971    129.2
     2e15 megabyte-p8-s            2,048 x 32     9.81M      15.43   4%   0.0015   1,977    129.6
     2e15 megabyte-p16-s           2,048 x 32    17.30M      14.84   3%   0.0015   2,056    134.7
     2e15 megabyte-p8-8k-s          8,192 x 8     9.81M      17.20  14%   0.0015   1,774    116.3
     1e16 transformer-m            2,048 x 32     3.03M      33.42  56%   0.0015   4,565    299.2
     1e16 transformer-m-lr0.5x     2,048 x 32     3.03M      33.42  56%  0.00075   4,565    299.2
     1e16 transformer-m-lr2x       2,048 x 32     3.03M      33.42  56%    0.003   4,565    299.2
     1e16 megabyte-p4-m            2,048 x 32    14.79M      39.99   9%   0.0015   3,816    250.1
     1e16 megabyte-p8-m            2,048 x 32    24.37M      36.32   4%   0.0015   4,201    275.3
     1e16 megabyte-p8-m-lr0.5x     2,048 x 32    24.37M      36.32   4%  0.00075   4,201    275.3
     1e16 megabyte-p8-m-lr2x       2,048 x 32    24.37M      36.32   4%    0.003   4,201    275.3
     1e16 megabyte-p16-m           2,048 x 32    44.87M      35.51   2%   0.0015   4,297    281.6
     1e16 megabyte-p8-8k-m          8,192 x 8    24.37M      39.86  12%   0.0015   3,828    250.9
     1e16 megabyte-p8-8k-m-lr0.5x   8,192 x 8    24.37M      39.86  12%  0.00075   3,828    250.9
     1e16 megabyte-p8-8k-m-lr2x     8,192 x 8    24.37M      39.86  12%    0.003   3,828    250.9
     1e17 transformer-l            2,048 x 32    26.53M     252.44  40%  0.00075   6,044    396.1
     1e17 megabyte-p8-l            2,048 x 32   178.87M     238.58   2%  0.00075   6,396    419.2
     1e17 megabyte-p8-8k-l          8,192 x 8   178.87M     252.74   8%  0.00075   6,037    395.6

What each arm tests:

  patch size     at 2e15 and 1e16, MEGABYTE P = 4, 8, 16 against the byte Transformer at
                 equal FLOPs and context (2,048 bytes, batch 32).
  learning rate  at 1e16, x0.5, x1 and x2 of `BASE_LR` for the Transformer, MEGABYTE P = 8
                 and its 8k version (`NAME-lr0.5x`, `NAME-lr2x`): is a comparison an
                 artefact of one shared learning rate? The plots draw each series at its
                 best learning rate; table.md lists every run and the best of each.
                 The 1e17 models run at `LR_SCALE_1E17` x `BASE_LR`.
  4x context     the paper's arm (its Table 7): MEGABYTE P = 8 at 8,192 bytes, batch 8
                 (`megabyte-p8-8k-*`, the same 65,536 bytes per step and the same shape as
                 `megabyte-p8-*`) beside the Transformer at 2,048, batch 32, at equal FLOPs,
                 at every budget. The plots label it "megabyte-p8 (8k)".
  scale          each series (transformer, megabyte-p4, -p8, -p16, -p8 8k) is one line
                 over the budgets (`series`): where the lines cross, if they do.

Held-out evaluation: every run scores every held-out byte (the same bytes, `eval_bytes`),
each file from an empty context in consecutive windows of the model's own context. Models
of 2,048 and 8,192 bytes therefore see the same context for every byte within the first
2,048 of its file and differ only past it, where the 8k model sees up to 8,192 bytes back
(the share of such bytes is logged and is in results.json, `corpora.main.eval.share_past`).
The evaluation batch of an 8k model holds 4x fewer windows (`model_eval_batch_size`), so
its quick evaluations score about as many bytes as the others'.

`:cpu` is a tiny version for a 2-core CPU (a few minutes): 256-byte windows, batch 8,
models of 0.2-2.3M parameters, 4 MB of this machine's site-packages. It proves the pipeline,
nothing about the models.
"""


BASE_LR = 1.5e-3
"""The peak learning rate of the `h100` and `scaling` variants (the peer trainer's)."""

SCALING_SIZES = {2e15: ("s", 192, 2), 1e16: ("m", 256, 3), 1e17: ("l", 512, 6)}
"""`scaling`: per budget, (size suffix, MEGABYTE local width w, local layers n)."""

SCALING_TRANSFORMERS = {2e15: (192, 2), 1e16: (256, 3), 1e17: (512, 8)}
"""`scaling`: per budget, the byte Transformer's (width, layers), 64-wide heads."""

LR_SCALE_1E17 = 0.5
"""`scaling`: the 1e17 models' peak learning rate relative to `BASE_LR` (their widths are
twice the 1e16 models'; learning rate as 1/width). Set it from the 1e16 sweep's best
multiplier before running 1e17."""


def _megabyte(name: str, patch_size: int, w: int, n: int, **extra) -> dict:
  """A MEGABYTE model dict of the `scaling` rule: local `w` x `n` with 8 heads of 64,
  global 2n layers, 2w wide at P = 8 and as wide as gives the same global FLOPs per byte at
  other P (2w sqrt(P / 8), in whole 64-wide heads)."""
  global_dim = int(round(2 * w * (patch_size / 8) ** 0.5 / 64)) * 64
  return dict({"name": name, "kind": "megabyte", "patch_size": patch_size,
               "global_dim": global_dim, "global_layers": 2 * n,
               "global_heads": global_dim // 64, "local_dim": w, "local_layers": n,
               "local_heads": 8, "local_head_dim": 64}, **extra)


def _lr_sweep(model: dict, scales=(0.5, 2.0)) -> list[dict]:
  """`model` and its copies at `scales` times its learning rate (`NAME-lr0.5x`, ...), all
  of its series."""
  lr = model.get("learning_rate", BASE_LR)
  return [model] + [dict(model, name=f"{model['name']}-lr{s:g}x", learning_rate=lr * s)
                    for s in scales]


def scaling_models() -> list[dict]:
  """The models of the `scaling` variant, each with its own budgets (module docstring)."""
  models = []
  for budget, (size, w, n) in SCALING_SIZES.items():
    own = {"budgets": [budget]}
    if budget == 1e17:
      own["learning_rate"] = BASE_LR * LR_SCALE_1E17
    dim, layers = SCALING_TRANSFORMERS[budget]
    transformer = dict(own, name=f"transformer-{size}", kind="transformer", dim=dim,
                       layers=layers, heads=dim // 64, series="transformer")
    p8 = _megabyte(f"megabyte-p8-{size}", 8, w, n, **dict(own, series="megabyte-p8"))
    p8_8k = dict(p8, name=f"megabyte-p8-8k-{size}", seq_len=8192, batch_size=8)
    others = [_megabyte(f"megabyte-p{p}-{size}", p, w, n, **dict(own, series=f"megabyte-p{p}"))
              for p in (4, 16)]
    if budget == 2e15:
      models += [transformer] + others[:1] + [p8] + others[1:] + [p8_8k]
    elif budget == 1e16:
      models += (_lr_sweep(transformer) + others[:1] + _lr_sweep(p8) + others[1:]
                 + _lr_sweep(p8_8k))
    else:
      models += [transformer, p8, p8_8k]
  return models


def _scaling_study() -> dict:
  """The `scaling` variant (module docstring)."""
  return {
      "name": "code_equal_compute_scaling",
      "corpus": {"kind": "packages", "roots": "site-packages", "eval_target_bytes": 4 << 20,
                 "max_train_bytes": 1 << 30, "max_file_bytes": 1 << 20, "seed": 0},
      "seq_len": 2048, "batch_size": 32, "eval_batch_size": 64,
      "model_defaults": {"dtype": "bfloat16", "param_dtype": "float32"},
      "train": {"learning_rate": BASE_LR, "warmup_fraction": 0.05, "min_lr_ratio": 0.1,
                "weight_decay": 0.1, "b2": 0.95, "grad_clip": 1.0},
      "quick_evals": 4, "eval_batches": 8, "checkpoint_every": 1000,
      "budgets": list(SCALING_SIZES),
      "models": scaling_models(),
  }


def get_study(variant: str = "h100") -> dict:
  """Returns the study dict (see `experiments.study`) of `variant`: "h100", "scaling" or
  "cpu"."""
  if variant == "scaling":
    return _scaling_study()
  if variant == "h100":
    return {
        "name": "code_equal_compute",
        "corpus": {"kind": "packages", "roots": "site-packages", "eval_target_bytes": 4 << 20,
                   "max_train_bytes": 512 << 20, "max_file_bytes": 1 << 20, "seed": 0},
        "seq_len": 2048, "batch_size": 32, "eval_batch_size": 64,
        "model_defaults": {"dtype": "bfloat16", "param_dtype": "float32"},
        "train": {"learning_rate": BASE_LR, "warmup_fraction": 0.05, "min_lr_ratio": 0.1,
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
  raise ValueError(f"variant must be 'h100', 'scaling' or 'cpu', got {variant!r}")
