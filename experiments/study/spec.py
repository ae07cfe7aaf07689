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
from typing import Any, Sequence

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
  """Checks that a study dict has what the driver needs (see `load_study`).

  Raises:
    StudyError: naming the missing or bad key.
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
  for model in study["models"]:
    if model.get("kind") not in ("megabyte", "transformer"):
      raise StudyError(f"model {model['name']!r}: kind must be 'megabyte' or 'transformer'")
  budgets = study["budgets"]
  if not budgets:
    raise StudyError("the study has no budgets")
  for i, budget in enumerate(budgets):
    if budget == AUTO:
      if i == 0:
        raise StudyError("the first budget cannot be 'auto' (it scales a finished one)")
    elif not isinstance(budget, (int, float)) or budget <= 0:
      raise StudyError(f"budgets must be positive FLOP counts or 'auto', got {budget!r}")


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


def model_config(study: dict, model: dict, steps: int):
  """The `megabyte_jax` config of `model` trained for `steps` steps with the study's context,
  batch and optimiser (learning-rate schedule, warmup); data, evaluation and logging are the
  defaults (`experiment_config` sets them for a study run)."""
  dropped = ("name", "kind", "order", "learning_rate") + (
      ("patch_size",) if model["kind"] == "transformer" else ())
  fields = {k: v for k, v in model.items() if k not in dropped}
  fields = dict(study.get("model_defaults", {}), **fields)
  config = base_config(model["kind"], seq_len=study["seq_len"], **fields)
  train = dict(study.get("train", {}))
  warmup_fraction = train.pop("warmup_fraction", 0.05)
  for key, value in train.items():
    if key not in config.train:
      raise StudyError(f"unknown train setting {key!r} in the study")
    config.train[key] = value
  if "learning_rate" in model:
    config.train.learning_rate = model["learning_rate"]
  config.train.steps = int(steps)
  config.train.batch_size = int(study["batch_size"])
  # At least one warmup step, and at least one step of decay after it.
  config.train.warmup_steps = max(0, min(int(steps) - 1, max(1, round(warmup_fraction * steps))))
  return config


def experiment_config(study: dict, model: dict, steps: int, data_files: str, eval_files: str):
  """The `megabyte_jax` experiment config of one run of `model` for `steps` steps: the
  `model_config`, trained on `data_files` and evaluated on `eval_files` at the study's
  cadence."""
  config = model_config(study, model, steps)
  quick_evals = int(study.get("quick_evals", 0))
  log_every = max(1, int(steps) // int(study.get("log_windows", 40)))
  config.train.log_every = log_every
  if quick_evals:
    config.train.eval_every = max(1, int(steps) // quick_evals // log_every) * log_every
  else:
    config.train.eval_every = 0
  config.train.eval_batches = int(study.get("eval_batches", 8))
  config.train.checkpoint_every = int(steps)
  config.train.keep_checkpoints = 1
  config.train.tensorboard = False
  config.eval.batch_size = int(study.get("eval_batch_size", study["batch_size"]))
  config.data.name = "local_files"
  config.data.files = data_files
  config.data.eval_files = eval_files
  config.data.separator = study.get("separator", 0)
  config.data.split_seed = 0
  config.seed = int(study.get("seed", 0))
  config.sample.num_bytes = 0
  return config


def model_costs(study: dict) -> dict[str, Any]:
  """`{model name: flops.CostReport}` at the study's context length."""
  costs = {}
  for model in study["models"]:
    config = model_config(study, model, 1)
    _, cfg = build_model(config.model)
    costs[model["name"]] = model_cost(cfg, study["seq_len"])
  return costs


def steps_for_budget(budget: float, flops_per_byte: float, batch_size: int,
                     seq_len: int) -> int:
  """Steps whose training FLOPs come nearest `budget` (at least 1)."""
  return max(1, round(budget / (flops_per_byte * batch_size * seq_len)))


def corpus_key(study: dict, model: dict) -> str:
  """Which corpus a model reads: "main" (code), "raster" or "patch-p<patch size>" (images)."""
  if study["corpus"]["kind"] == "packages":
    return "main"
  order = model.get("order", "raster")
  return "raster" if order == "raster" else f"{order}-p{model['patch_size']}"


def plan_lines(study: dict, costs: dict, budgets: Sequence) -> list[str]:
  """A human-readable plan: per budget and model, steps, bytes and FLOPs per byte."""
  lines = [f"study {study['name']}: seq_len {study['seq_len']}, batch {study['batch_size']} "
           f"({study['seq_len'] * study['batch_size']:,} bytes per step)"]
  for model in study["models"]:
    c = costs[model["name"]]
    lines.append(f"  {model['name']:>14}: {c.params / 1e6:7.2f}M params, "
                 f"{c.train_flops_per_byte / 1e6:8.2f} MFLOP per trained byte "
                 f"(attention {c.attention_flops_per_byte / c.forward_flops_per_byte:.0%})")
  for budget in budgets:
    if budget == AUTO:
      lines.append("  budget auto: chosen after the earlier budgets, from their measured speed")
      continue
    for model in study["models"]:
      c = costs[model["name"]]
      steps = steps_for_budget(budget, c.train_flops_per_byte, study["batch_size"],
                               study["seq_len"])
      lines.append(f"  budget {budget_tag(budget):>7} {model['name']:>14}: {steps:6d} steps, "
                   f"{steps * study['batch_size'] * study['seq_len'] / 1e6:9.2f} MB")
  return lines
