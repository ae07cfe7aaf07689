"""Study specs: finding and checking a study, its budgets, its models' configs and costs.

A study is a module that defines `get_study(variant)`, a dict (`check_study` lists the keys it
needs). On the command line it is named by module (`study_module_name`):

    code_equal_compute                      experiments.studies.code_equal_compute
    experiments.configs.ablation.study      any importable module
    experiments/studies/mnist_scan.py       a file of the repository (or under a directory of
                                            the Python path): its module

each optionally followed by `:variant` (`code_equal_compute:cpu`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Any, Optional, Sequence

from experiments.study.records import budget_tag
from megabyte_jax.experiment import base_config
from megabyte_jax.flops import model_cost
from megabyte_jax.models import build_model

AUTO = "auto"
DEFAULT_AUTO_MULTIPLES = (16, 12, 10, 8, 6, 5, 4, 3, 2)
STUDIES_PACKAGE = "experiments.studies"
"""Where a study named without a dot lives."""
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


class StudyError(ValueError):
  """A study or a command-line option cannot be used."""


def study_names() -> list[str]:
  """The studies of `experiments/studies/`, by the names `--study` takes."""
  package = importlib.import_module(STUDIES_PACKAGE)
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)


def _module_of_file(path: str) -> str:
  """The module name of the Python file `path`: relative to the repository root, else to
  the first directory of `sys.path` that holds it."""
  if not os.path.isfile(path):
    raise StudyError(f"no study file {path!r}")
  real = os.path.realpath(path)
  for root in [REPO_ROOT] + [os.path.realpath(p or os.curdir) for p in sys.path]:
    try:
      relative = os.path.relpath(real, root)
    except ValueError:       # another drive
      continue
    parts = os.path.splitext(relative)[0].split(os.sep)
    if relative.endswith(".py") and all(part.isidentifier() for part in parts):
      return ".".join(parts)
  raise StudyError(f"study file {path!r} is outside the repository and the Python path; put "
                   f"it in experiments/studies/ or name it as a module (--study=MODULE)")


def study_module_name(name: str) -> str:
  """The module of a study named on the command line (without its `:variant`): a name
  without dots is a module of `experiments/studies/`, a dotted name is itself, and a path
  (`experiments/studies/NAME.py`) is the module of that file.

  Raises:
    StudyError: a path that is no file, or one outside the repository and the Python path.
  """
  if name.endswith(".py") or "/" in name or os.sep in name:
    return _module_of_file(name)
  if not name or not all(part.isidentifier() for part in name.split(".")):
    raise StudyError(f"a study is a module name or a .py file, got {name!r}")
  return name if "." in name else f"{STUDIES_PACKAGE}.{name}"


def import_study(module_name: str) -> Any:
  """Imports the study module `module_name`.

  Raises:
    StudyError: no such module (naming the studies of experiments/studies/), or a module
      without `get_study`.
  """
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if not e.name or not (module_name == e.name or module_name.startswith(e.name + ".")):
      raise              # the study exists; something it imports does not
    raise StudyError(f"no study module {module_name!r}; the studies of experiments/studies/ "
                     f"are {', '.join(study_names())}") from None
  if not hasattr(module, "get_study"):
    raise StudyError(f"{module_name} defines no get_study(variant)")
  return module


def load_study(spec: str) -> dict:
  """Imports the study `NAME[:variant]` (see `study_module_name`) and returns its
  `get_study(variant)` dict, checked, with `source` (its module and variant) added.

  Raises:
    StudyError: an unknown study, no `get_study`, or a study without the required keys.
  """
  name, _, variant = spec.partition(":")
  module_name = study_module_name(name)
  module = import_study(module_name)
  if name.endswith(".py") and os.path.realpath(module.__file__) != os.path.realpath(name):
    raise StudyError(f"module {module_name} is {module.__file__}, not {name!r}")
  study = module.get_study(variant) if variant else module.get_study()
  check_study(study)
  study.setdefault("source", module_name + (f":{variant}" if variant else ""))
  return study


def check_study(study: dict) -> None:
  """Checks that a study dict has what the driver needs (see `load_study`), and its
  models' own settings (`seq_len`, `batch_size`, `budgets`: see `model_seq_len`,
  `model_batch_size`, `runs_at`).

  Raises:
    StudyError: naming the missing or bad key (and the model it belongs to).
  """
  for key in ("name", "corpus", "seq_len", "batch_size", "budgets", "models"):
    if key not in study:
      raise StudyError(f"the study has no {key!r}")
  if study["corpus"].get("kind") not in ("packages", "mnist"):
    raise StudyError(f"corpus kind must be 'packages' or 'mnist', got "
                     f"{study['corpus'].get('kind')!r}")
  if not study["models"]:
    raise StudyError("the study has no models")
  names = [m.get("name") for m in study["models"]]
  if None in names or len(set(names)) != len(names):
    raise StudyError(f"every model needs a distinct name, got {names}")
  budgets = study["budgets"]
  if not budgets:
    raise StudyError("the study has no budgets")
  for i, budget in enumerate(budgets):
    if budget == AUTO:
      if i == 0:
        raise StudyError("the first budget cannot be 'auto' (it scales a finished one)")
    elif not _is_flops(budget):
      raise StudyError(f"budgets must be positive FLOP counts or 'auto', got {budget!r}")
  for model in study["models"]:
    _check_model(study, model)
  _check_every_budget_has_a_model(study)


def _is_flops(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _check_model(study: dict, model: dict) -> None:
  """The checks of one model dict of `check_study`."""
  name = model["name"]
  if model.get("kind") not in ("megabyte", "transformer"):
    raise StudyError(f"model {name!r}: kind must be 'megabyte' or 'transformer'")
  for key in ("seq_len", "batch_size", "eval_batch_size"):
    value = model.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value <= 0):
      raise StudyError(f"model {name!r}: {key} must be a positive integer, got {value!r}")
  if "budgets" not in model:
    return
  own = model["budgets"]
  if isinstance(own, (str, bytes)) or not isinstance(own, (list, tuple)) or not own:
    raise StudyError(f"model {name!r}: budgets must be a non-empty list of FLOP counts, "
                     f"got {own!r}")
  study_tags = [budget_tag(b) for b in study["budgets"] if b != AUTO]
  for budget in own:
    if not _is_flops(budget):
      raise StudyError(f"model {name!r}: budgets must be positive FLOP counts, got "
                       f"{budget!r}")
    if budget_tag(budget) not in study_tags:
      raise StudyError(f"model {name!r}: budget {budget_tag(budget)} is not one of the "
                       f"study's budgets ({', '.join(study_tags) or 'none'})")


def _check_every_budget_has_a_model(study: dict) -> None:
  for budget in study["budgets"]:
    if not runs_at(study, budget):
      what = "an 'auto' budget needs a model without its own budgets" if budget == AUTO \
          else f"no model of the study runs at budget {budget_tag(budget)}"
      raise StudyError(what)


def runs_at(study: dict, budget) -> list[dict]:
  """The models of `study` that run at `budget`: a model with its own `budgets` (a list of
  the study's budgets) only at those, one without at every budget. At `"auto"` (and at the
  budget it resolves to: the runner asks for `"auto"`), only the models without their own
  budgets."""
  if budget == AUTO:
    return [m for m in study["models"] if "budgets" not in m]
  tag = budget_tag(budget)
  return [m for m in study["models"]
          if "budgets" not in m or tag in {budget_tag(b) for b in m["budgets"]}]


def select_runs(study: dict, budgets: Optional[Sequence] = None,
                models: Optional[Sequence[str]] = None) -> dict:
  """`study` narrowed to the given budgets and models (the command line's `--budgets`,
  `--models`); the study passed in is unchanged.

  `budgets` replaces the study's; a model with its own budgets keeps those among them and
  is left out when none is. Without `budgets`, the study's budgets at which none of the
  chosen models runs are left out.

  Raises:
    StudyError: an unknown model name, or a given budget at which no chosen model runs.
  """
  study = dict(study)
  if models:
    unknown = sorted(set(models) - {m["name"] for m in study["models"]})
    if unknown:
      raise StudyError(f"unknown model(s) {unknown}; the study's models are "
                       f"{', '.join(m['name'] for m in study['models'])}")
    study["models"] = [m for m in study["models"] if m["name"] in set(models)]
  if budgets is None:
    study["budgets"] = [b for b in study["budgets"] if runs_at(study, b)]
    return study
  tags = {budget_tag(b) for b in budgets if b != AUTO}
  for budget in budgets:
    if budget != AUTO and not runs_at(study, budget):
      declared = sorted({b for m in study["models"] for b in m.get("budgets", ())})
      raise StudyError(
          f"no model{' of --models' if models else ''} runs at budget {budget_tag(budget)}; "
          f"the models' own budgets are {', '.join(map(budget_tag, declared))}")
  kept = []
  for model in study["models"]:
    if "budgets" in model:
      model = dict(model, budgets=[b for b in model["budgets"] if budget_tag(b) in tags])
      if not model["budgets"]:
        continue
    kept.append(model)
  study.update(budgets=list(budgets), models=kept)
  return study


def parse_budgets(text: str) -> list:
  """`"1e15,4e15"` or `"1e15,auto"` -> `[1e15, 4e15]` / `[1e15, "auto"]`."""
  out = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    if part == AUTO:
      out.append(AUTO)
      continue
    try:
      out.append(float(part))
    except ValueError:
      raise StudyError(f"a budget must be a number of FLOPs or 'auto', got {part!r}") from None
  if not out:
    raise StudyError("no budgets given")
  return out


def model_seq_len(study: dict, model: dict) -> int:
  """The context a model trains and is evaluated at: its own `seq_len`, else the study's."""
  return int(model.get("seq_len", study["seq_len"]))


def model_batch_size(study: dict, model: dict) -> int:
  """A model's training batch (windows per step): its own `batch_size`, else the study's."""
  return int(model.get("batch_size", study["batch_size"]))


def model_eval_batch_size(study: dict, model: dict) -> int:
  """A model's evaluation batch (windows): its own `eval_batch_size`; else the study's
  (`eval_batch_size`, default `batch_size`), scaled by the study's `seq_len` over the
  model's, so that every evaluation batch holds about the same bytes (memory) and the quick
  evaluations (`eval_batches` batches) score about the same number of bytes."""
  if "eval_batch_size" in model:
    return int(model["eval_batch_size"])
  base = int(study.get("eval_batch_size", study["batch_size"]))
  return max(1, base * int(study["seq_len"]) // model_seq_len(study, model))


MODEL_KEYS = ("name", "kind", "order", "learning_rate", "series", "seq_len", "batch_size",
              "eval_batch_size", "budgets")
"""Keys of a study's model dict that are not fields of the model's config."""


def model_config(study: dict, model: dict, steps: int):
  """The `megabyte_jax` config of `model` trained for `steps` steps with its context and
  batch (`model_seq_len`, `model_batch_size`) and the study's optimiser (learning-rate
  schedule, warmup; the model's own `learning_rate` if it has one); data, evaluation and
  logging are the defaults (`experiment_config` sets them for a study run)."""
  dropped = MODEL_KEYS + (("patch_size",) if model["kind"] == "transformer" else ())
  fields = {k: v for k, v in model.items() if k not in dropped}
  fields = dict(study.get("model_defaults", {}), **fields)
  config = base_config(model["kind"], seq_len=model_seq_len(study, model), **fields)
  train = dict(study.get("train", {}))
  warmup_fraction = train.pop("warmup_fraction", 0.05)
  for key, value in train.items():
    if key not in config.train:
      raise StudyError(f"unknown train setting {key!r} in the study")
    config.train[key] = value
  if "learning_rate" in model:
    config.train.learning_rate = model["learning_rate"]
  config.train.steps = int(steps)
  config.train.batch_size = model_batch_size(study, model)
  # At least one warmup step, and at least one step of decay after it.
  config.train.warmup_steps = max(0, min(int(steps) - 1, max(1, round(warmup_fraction * steps))))
  return config


def experiment_config(study: dict, model: dict, steps: int, data_files: str, eval_files: str):
  """The `megabyte_jax` experiment config of one run of `model` for `steps` steps: the
  `model_config`, trained on `data_files` and evaluated on `eval_files` (every held-out
  byte, each file from an empty context in windows of the model's own `seq_len`) at the
  study's cadence."""
  config = model_config(study, model, steps)
  quick_evals = int(study.get("quick_evals", 0))
  log_every = max(1, int(steps) // int(study.get("log_windows", 40)))
  config.train.log_every = log_every
  if quick_evals:
    config.train.eval_every = max(1, int(steps) // quick_evals // log_every) * log_every
  else:
    config.train.eval_every = 0
  config.train.eval_batches = int(study.get("eval_batches", 8))
  # A checkpoint at the end, and every `checkpoint_every` steps if the study sets it (so that
  # `--resume` can continue a run that a time limit or a kill cut short).
  every = int(study.get("checkpoint_every") or 0)
  config.train.checkpoint_every = min(int(steps), every) if every > 0 else int(steps)
  config.train.keep_checkpoints = 1
  config.train.tensorboard = False
  config.eval.batch_size = model_eval_batch_size(study, model)
  config.data.name = "local_files"
  config.data.files = data_files
  config.data.eval_files = eval_files
  config.data.separator = study.get("separator", 0)
  config.data.split_seed = 0
  config.seed = int(study.get("seed", 0))
  config.sample.num_bytes = 0
  return config


def model_costs(study: dict) -> dict[str, Any]:
  """`{model name: flops.CostReport}`, each at the model's own context (`model_seq_len`)."""
  costs = {}
  for model in study["models"]:
    config = model_config(study, model, 1)
    _, cfg = build_model(config.model)
    costs[model["name"]] = model_cost(cfg, model_seq_len(study, model))
  return costs


def steps_for_budget(budget: float, flops_per_byte: float, batch_size: int,
                     seq_len: int) -> int:
  """Steps whose training FLOPs come nearest `budget` (at least 1)."""
  return max(1, round(budget / (flops_per_byte * batch_size * seq_len)))


def bytes_per_step(study: dict, model: dict) -> int:
  """Training bytes of one step of `model`: its batch times its context."""
  return model_batch_size(study, model) * model_seq_len(study, model)


def model_steps(study: dict, model: dict, cost, budget: float) -> int:
  """Steps of `model` (whose `flops.CostReport` is `cost`) at `budget` training FLOPs, with
  its own batch and context (`steps_for_budget`)."""
  return steps_for_budget(budget, cost.train_flops_per_byte, model_batch_size(study, model),
                          model_seq_len(study, model))


def corpus_key(study: dict, model: dict) -> str:
  """Which corpus a model reads: "main" (code), "raster" or "patch-p<patch size>" (images)."""
  if study["corpus"]["kind"] == "packages":
    return "main"
  order = model.get("order", "raster")
  return "raster" if order == "raster" else f"{order}-p{model['patch_size']}"


def _shape(study: dict, model: dict) -> str:
  """"2,048 x 32" (context x batch)."""
  return f"{model_seq_len(study, model):,} x {model_batch_size(study, model)}"


def plan_lines(study: dict, costs: dict, budgets: Sequence) -> list[str]:
  """A human-readable plan: per budget, the models that run there with their context x
  batch, parameters, training FLOPs per byte, learning rate, steps and bytes."""
  lines = [f"study {study['name']}: {study['seq_len']:,}-byte context, batch "
           f"{study['batch_size']} ({study['seq_len'] * study['batch_size']:,} bytes per "
           f"step) and peak learning rate "
           f"{study.get('train', {}).get('learning_rate', '(default)')} where a model sets "
           f"no other"]
  width = max(len(m["name"]) for m in study["models"])
  lines.append(f"  {'budget':>7} {'model':<{width}} {'context x b':>11} {'params':>9} "
               f"{'MFLOP/byte':>10} {'attn':>4} {'peak lr':>8} {'steps':>7} {'MB':>8}")
  for budget in budgets:
    if budget == AUTO:
      names = ", ".join(m["name"] for m in runs_at(study, AUTO))
      lines.append(f"  budget auto: chosen after the earlier budgets, from their measured "
                   f"speed; models {names}")
      continue
    for model in runs_at(study, budget):
      c = costs[model["name"]]
      steps = model_steps(study, model, c, budget)
      lr = model.get("learning_rate", study.get("train", {}).get("learning_rate"))
      lines.append(
          f"  {budget_tag(budget):>7} {model['name']:<{width}} {_shape(study, model):>11} "
          f"{c.params / 1e6:8.2f}M {c.train_flops_per_byte / 1e6:10.2f} "
          f"{c.attention_flops_per_byte / c.forward_flops_per_byte:4.0%} "
          f"{'-' if lr is None else format(lr, '.3g'):>8} {steps:7,d} "
          f"{steps * bytes_per_step(study, model) / 1e6:8.1f}")
  return lines
