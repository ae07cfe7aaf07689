"""Shared fixtures: tiny model configs and a small corpus of real files."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A persistent compilation cache shared by every test and every subprocess they start (the
# CLI and training-run tests compile the same tiny models again and again): it halves a
# tiny training run on a 2-core CPU. Entries are keyed by the computation, jax version and
# backend, so a stale one is never used; set JAX_COMPILATION_CACHE_DIR to use another place.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(REPO, ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# XLA's CPU backend compiles without LLVM's optimization passes (level 0: compiling, which is
# most of the suite's time, takes half as long), with its classic kernel emitters instead of
# the MLIR-based ones (another 40% off) and each program as one LLVM module instead of parts
# for parallel code generation (the test workers keep every core busy already: 20% less CPU
# time); the tiny test programs run about as fast. The same computations run (only the
# machine code differs); every process the tests start inherits the flags. Set
# --xla_backend_optimization_level in XLA_FLAGS to choose.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
                  "--xla_cpu_parallel_codegen_split_count=1")


def xla_accepts(flags: str) -> bool:
  """Whether this jaxlib's XLA accepts `flags` in XLA_FLAGS. A flag it does not know ends
  the process that reads it, so a child process reads them (a tenth of a second)."""
  probe = ("try:\n  from jaxlib import _jax\nexcept ImportError:\n  import jax\n"
           "  jax.devices()\nelse:\n  _jax.CompileOptions()\n")
  return subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, XLA_FLAGS=flags),
                        capture_output=True, check=False, timeout=120).returncode == 0


if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  _flags = os.environ.get("XLA_FLAGS", "")
  for _flag in TEST_XLA_FLAGS:          # a flag this XLA lacks is left out
    if xla_accepts(f"{_flags} {_flag}"):
      _flags = f"{_flags} {_flag}".strip()
  os.environ["XLA_FLAGS"] = _flags

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from megabyte_jax import MegabyteConfig, TransformerConfig  # pylint: disable=g-import-not-at-top

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
# Exact float32 matmuls on every backend (GPUs default to TF32), so that numerical
# comparisons between two ways of computing the same logits hold everywhere.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def megabyte_cfg():
  """A tiny MEGABYTE: T=32, P=4 (8 patches)."""
  return MegabyteConfig(seq_len=32, patch_size=4, global_dim=32, global_layers=2,
                        global_heads=2, local_dim=16, local_layers=2, local_heads=2)


@pytest.fixture
def transformer_cfg():
  """A tiny byte transformer: T=32."""
  return TransformerConfig(seq_len=32, dim=32, layers=2, heads=2)


def make_corpus(root) -> str:
  """Writes the `corpus` fixture's files into the new directory `root`; returns its path."""
  stdlib = sysconfig.get_paths()["stdlib"]
  for package in ("json", "email"):
    src = os.path.join(stdlib, package)
    for name in sorted(os.listdir(src))[:6]:
      if name.endswith(".py"):
        os.makedirs(os.path.join(root, package), exist_ok=True)
        shutil.copy(os.path.join(src, name), os.path.join(root, package, name))
  return str(root)


@pytest.fixture
def corpus(tmp_path):
  """A directory of 12 real source files (the stdlib's `json` and `email` packages)."""
  return make_corpus(tmp_path / "corpus")


def _subprocess_env() -> dict:
  """The environment of the commands the tests start: this checkout's package first on the
  path, UTF-8 standard streams."""
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
              PYTHONIOENCODING="utf-8")


def run_module(*args, check=True, text=True):
  """Runs `python -m ARGS...` from the repo root as a user would; returns the process.

  With `check`, a non-zero exit fails the test with its output.
  """
  env = _subprocess_env()
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=text, timeout=600)
  if check and proc.returncode:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


COMMANDS_HELPER = os.path.join(REPO, "tests", "helpers", "commands.py")


def run_commands(*commands, block=None, cwd=REPO):
  """Runs `(module, [args])` commands in one Python process, each as its console script
  would (`tests/helpers/commands.py`: one JAX import for all of them); returns their
  `{code, stdout, stderr}` in order. `block`: modules made unimportable first."""
  env = _subprocess_env()
  args = [sys.executable, COMMANDS_HELPER] + ([f"--block={block}"] if block else [])
  proc = subprocess.run(args + [json.dumps([[m, list(a)] for m, a in commands])], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]
