"""Orbax checkpointing of the training state in `WORKDIR/checkpoints`, with integrity checks.

Each step's directory gets a manifest, `STEP/checksums.json`, once its save has finished:
the size and SHA-256 of every file, and whether every parameter was finite when saved.
Restoring a step recomputes the checksums (a flipped byte, even one that keeps the file's
length, is caught) and checks that every restored value is finite; a step that fails either
is corrupt. `restore_latest_good` then warns in one line naming it, moves it aside to
`STEP.unreadable` and falls back to the next older step. A step that cannot be read for lack
of permissions is not corrupt: it is named in a `CheckpointAccessError` and left in place.

Retention keeps the newest `keep` steps and, beyond them, the newest verified-good step
(a manifest saying its parameters were finite) until a newer good one exists, so a run that
goes bad never deletes the last checkpoint worth resuming from.

A remote work directory (`gs://...`, any `etils.epath` URI) is handed to Orbax as is; the
manifests, retention and set-aside steps then go through `epath`, and the local-only checks
(free disk space, file permissions) are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any, Optional

from etils import epath
import grain
import numpy as np
import orbax.checkpoint as ocp

from megabyte_jax.errors import CheckpointError

CHECKPOINT_SUBDIR = "checkpoints"
MANIFEST = "checksums.json"
# What each step holds: the training state, the input pipeline's position, the run's config
# (JSON, in STEP/config/metadata: a lost or damaged DIR/config.json can be recovered from it).
ITEMS = ("state", "data", "config")
CONFIG_COPY = os.path.join("config", "metadata")
_FULL_DISK = ("RESOURCE_EXHAUSTED", "No space left on device", "Disk quota exceeded")


class _QuietWriteFailures(logging.Filter):
  """Drops Orbax's own error logs (with tracebacks, from its background threads) of a write
  that failed for a full disk or permissions: `Checkpointer` reports those in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or "orbax" not in (record.pathname or ""):
      return True
    text = [record.getMessage()]
    error = record.exc_info[1] if record.exc_info else None
    seen = set()
    while error is not None and id(error) not in seen:   # the message and its causes
      seen.add(id(error))
      text.append(f"{type(error).__name__}: {error}")
      error = error.__cause__ or error.__context__
    text = " ".join(text)
    return not any(m in text for m in _FULL_DISK + ("PERMISSION_DENIED", "Permission denied"))


logging.getLogger("absl").addFilter(_QuietWriteFailures())


class CheckpointAccessError(CheckpointError):
  """A checkpoint cannot be read for lack of permissions (it is not corrupt)."""


class CheckpointVanished(CheckpointError):
  """A checkpoint was deleted while it was being read (the retention of a trainer that is
  saving into the same directory); it is not corrupt."""


# Listing the steps while a trainer deletes old ones may meet a step that vanished: the
# listing is tried again this many times.
LIST_ATTEMPTS = 5


def _one_line(value: Any, limit: int = 400) -> str:
  text = " ".join(str(value).split())
  return text if len(text) <= limit else text[:limit] + " ..."


def _write_reason(e: BaseException) -> Optional[str]:
  """Why a write failed, in words, or None when `e` is not a failed write. TensorStore
  reports a full disk as `ValueError: RESOURCE_EXHAUSTED: ...`, not as an `OSError`."""
  if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError,)):
    return e.strerror or _one_line(e)
  text = str(e)
  if any(marker in text for marker in _FULL_DISK):
    return f"No space left on device ({_one_line(text, 160)})"
  if "PERMISSION_DENIED" in text or "Permission denied" in text:
    return f"Permission denied ({_one_line(text, 160)})"
  return None


def _remote(path: str) -> bool:
  return "://" in path


def _digests(step_dir: str) -> dict:
  """`{relative path: [size, sha256]}` of every file below `step_dir` but the manifest."""
  if _remote(step_dir):
    return _remote_digests(step_dir)
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(MANIFEST):   # the manifest and its temporary file
        continue
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      out[rel] = [os.path.getsize(path), h.hexdigest()]
  return out


def _remote_digests(step_dir: str) -> dict:
  """`_digests` of a remote step directory (through `epath`)."""
  out = {}
  top = epath.Path(step_dir)
  for root, _, files in top.walk():
    for name in sorted(files):
      path = epath.Path(root) / name
      rel = os.path.relpath(os.fspath(path), os.fspath(top))
      if rel.startswith(MANIFEST):
        continue
      data = path.read_bytes()
      out[rel] = [len(data), hashlib.sha256(data).hexdigest()]
  return out


def count_non_finite(tree: Any) -> tuple[int, int]:
  """`(non-finite values, all values)` over the floating-point arrays of `tree`.

  One jitted computation over the whole tree, so that in a multi-process run (arrays
  sharded over every process's devices) all processes run the same collective program;
  the replicated count is read from this process's own shard."""
  import jax   # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp   # pylint: disable=g-import-not-at-top
  leaves = [x for x in jax.tree_util.tree_leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return 0, 0
  count = jax.jit(lambda xs: sum(jnp.sum(~jnp.isfinite(x), dtype=jnp.int32) for x in xs))(
      leaves)
  if isinstance(count, jax.Array) and not count.is_fully_addressable:
    count = count.addressable_data(0)
  return int(np.asarray(count)), int(sum(x.size for x in leaves))


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep`, restores latest.

  A thin layer over `ocp.CheckpointManager` with up to three items per step (`ITEMS`):
  `state` (the training state pytree) and, when given, `data` (the Grain input iterator's
  position), so that a resumed run continues the input stream exactly where it stopped, and
  `config` (the run's config, so that it can be recovered). See the module docstring for the
  integrity checks and the retention rule.
  """

  def __init__(self, workdir: str, save_every: int = 1000, keep: Optional[int] = 3):
    workdir = os.fspath(workdir)
    if _remote(workdir):
      self.directory = workdir.rstrip("/") + "/" + CHECKPOINT_SUBDIR
    else:
      self.directory = os.path.abspath(os.path.join(os.path.expanduser(workdir),
                                                    CHECKPOINT_SUBDIR))
    self.keep = keep
    self.check_space = True   # refuse a save that cannot fit before writing it
    self._in_flight: Optional[int] = None
    self._pending: dict[int, bool] = {}   # saved by this process, not yet sealed
    options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=save_every,
                                           create=True)
    for attempt in range(LIST_ATTEMPTS):
      try:
        with self._read_errors():
          self._manager = ocp.CheckpointManager(epath.Path(self.directory), options=options,
                                                item_names=ITEMS)
        break
      except FileNotFoundError:   # a step deleted while listed (a trainer's retention)
        if attempt == LIST_ATTEMPTS - 1:
          raise CheckpointError(f"cannot list the checkpoints in {self.directory}: steps "
                                f"keep vanishing while they are listed") from None

  @contextlib.contextmanager
  def _read_errors(self):
    """A directory that cannot be listed becomes one `CheckpointAccessError` line."""
    try:
      yield
    except PermissionError as e:
      raise CheckpointAccessError(
          f"cannot read the checkpoint directory {self.directory}: {e.strerror or e} "
          f"({e.filename or self.directory}); fix its permissions") from e

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when the directory holds no checkpoint."""
    with self._read_errors():
      return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, oldest first."""
    with self._read_errors():
      return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def manifest(self, step: int) -> Optional[dict]:
    """The manifest of `step` (None when it has none: still saving, or killed first)."""
    try:
      path = os.path.join(self.step_dir(step), MANIFEST)
      if _remote(path):
        value = json.loads(epath.Path(path).read_text(encoding="utf-8"))
      else:
        with open(path, encoding="utf-8") as f:
          value = json.load(f)
      return value if isinstance(value, dict) else None
    except (OSError, ValueError):
      return None

  def save(self, step: int, state: Any, data_iterator: Optional[Any] = None,
           force: bool = False, config: Optional[dict] = None) -> bool:
    """Saves `state` (and the Grain `data_iterator`'s position, and the run's `config` as
    JSON, `STEP/config/metadata`) at `step` if the interval says so (always with `force`);
    returns whether it did. The previous save is finished and sealed first. A step that is
    saved already is not saved again (a stop right after a periodic save)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    with self._write_errors(self._in_flight):   # a failed earlier save surfaces here
      self._manager.wait_until_finished()
      self._seal()
    self._in_flight = None
    if step in self._manager.all_steps():
      return False
    with self._write_errors(step):
      if not force and not self._manager.should_save(step):
        return False
      finite = count_non_finite(getattr(state, "params", state))[0] == 0
      self._check_space(step, state)
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
      if saved:
        self._pending[step] = finite
        self._in_flight = step
      return saved

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save that cannot fit on the disk, before Orbax starts writing: the size of
    the newest saved step (or of the state's arrays, plus 1 MiB of metadata) against the
    free space. A disk that fills meanwhile is still caught when the write fails."""
    if not self.check_space or _remote(self.directory):
      return
    import jax   # pylint: disable=g-import-not-at-top
    steps = sorted(self._manager.all_steps())
    if steps:
      top = self.step_dir(steps[-1])
      need = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(top) for f in fs)
    else:
      need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(state))
      need += 2 ** 20
    free = shutil.disk_usage(self.directory).free
    if need > free:
      raise OSError(errno.ENOSPC, f"No space left on device (a checkpoint takes about "
                                  f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free)")

  def _seal(self) -> None:
    """Writes the manifest of each finished save of this process, then applies retention."""
    import jax   # pylint: disable=g-import-not-at-top
    steps = set(self._manager.all_steps())
    for step, finite in sorted(self._pending.items()):
      if step in steps and jax.process_index() == 0:
        self._write_manifest(step, finite)
    self._pending = {}
    self._retain()

  def _write_manifest(self, step: int, finite: bool) -> None:
    path = os.path.join(self.step_dir(step), MANIFEST)
    files = _digests(self.step_dir(step))
    if _remote(path):   # an object upload replaces the object whole
      epath.Path(path).write_text(json.dumps({"step": step, "finite": bool(finite),
                                              "files": files}), encoding="utf-8")
      return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"step": step, "finite": bool(finite), "files": files}, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)

  def last_good_step(self) -> Optional[int]:
    """The newest step whose manifest says it was saved with finite parameters."""
    good = [s for s in self.all_steps() if (self.manifest(s) or {}).get("finite") is True]
    return good[-1] if good else None

  def _retain(self) -> None:
    """Deletes steps beyond the newest `keep`, but never the newest verified-good one."""
    import jax   # pylint: disable=g-import-not-at-top
    if self.keep is None or jax.process_index() != 0:
      return
    steps = sorted(self._manager.all_steps())
    keep = set(steps[-self.keep:])
    good = self.last_good_step()
    if good is not None:
      keep.add(good)
    doomed = [s for s in steps if s not in keep]
    for step in doomed:
      if _remote(self.directory):
        with contextlib.suppress(OSError):
          epath.Path(self.step_dir(step)).rmtree()
      else:
        shutil.rmtree(self.step_dir(step), ignore_errors=True)
    if doomed:
      self._manager.reload()

  def _remove_partial(self, step: Optional[int]) -> None:
    """Deletes the temporary directories a failed save left (they hold space)."""
    import jax   # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:
      return
    pattern = f"{'*' if step is None else step}.orbax-checkpoint-tmp*"
    if _remote(self.directory):
      with contextlib.suppress(OSError):
        for path in epath.Path(self.directory).glob(pattern):
          path.rmtree()
      return
    for path in glob.glob(os.path.join(glob.escape(self.directory), pattern)):
      shutil.rmtree(path, ignore_errors=True)

  @contextlib.contextmanager
  def _write_errors(self, step: Optional[int]):
    """Turns a failed write (disk full, permissions, ...) into a one-line `CheckpointError`
    that names the directory and says which checkpoint is still good. Orbax writes into a
    temporary directory and renames it only when complete, so a failed or killed save never
    touches the checkpoints already there; the failed save's temporary directory is
    removed."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      reason = _write_reason(e)
      if reason is None:
        raise
      self._pending, self._in_flight = {}, None
      self._remove_partial(None)
      try:
        self._manager.reload()
        good = [s for s in sorted(self._manager.all_steps()) if s != step]
      except Exception:  # pylint: disable=broad-except
        good = []
      raise CheckpointError(
          f"cannot write the checkpoint{'' if step is None else f' of step {step}'} in "
          f"{self.directory}: {reason}; the newest complete checkpoint, "
          f"{'step ' + str(good[-1]) if good else 'none'}, is untouched") from e

  def has_data_state(self, step: int) -> bool:
    """Whether the checkpoint of `step` holds a data iterator position."""
    return epath.Path(os.path.join(self.directory, str(step), "data")).is_dir()

  def _check_present(self, step: int) -> None:
    """Raises `CheckpointVanished` when the directory of a listed step is gone (a
    directory that may not be looked at is left to `_check_access`)."""
    path = self.step_dir(step)
    if _remote(path):
      gone = not epath.Path(path).exists()
    else:
      try:
        os.stat(path)
        gone = False
      except FileNotFoundError:
        gone = True
      except OSError:
        gone = False
    if gone:
      raise CheckpointVanished(
          f"the checkpoint of step {step} in {self.directory} was deleted while it was "
          f"being read (a trainer saving there keeps only its newest checkpoints)")

  def _check_access(self, step: int) -> None:
    """Raises `CheckpointAccessError` naming the first file or directory of `step` that
    this user may not read (permissions are not corruption: nothing is renamed)."""
    top = self.step_dir(step)
    if _remote(top):   # permissions are the object store's: Orbax reports them on read
      return
    for root, dirs, files in os.walk(top, onerror=lambda e: None):
      for path, mode in ([(root, os.R_OK | os.X_OK)]
                         + [(os.path.join(root, f), os.R_OK) for f in files]):
        if not os.access(path, mode):
          raise CheckpointAccessError(
              f"cannot read the checkpoint of step {step}: permission denied on {path}; fix "
              f"its permissions (the checkpoint is left as it is)")
    if not os.access(top, os.R_OK | os.X_OK):
      raise CheckpointAccessError(
          f"cannot read the checkpoint of step {step}: permission denied on {top}; fix its "
          f"permissions (the checkpoint is left as it is)")

  def verify(self, step: int) -> None:
    """Checks `step`'s files against its manifest (when it has one).

    Raises:
      CheckpointError: naming the first file that is missing, has another size or another
        checksum than when it was saved.
    """
    manifest = self.manifest(step)
    if manifest is None:
      return
    expected = manifest.get("files") or {}
    try:
      actual = _digests(self.step_dir(step))
    except PermissionError as e:
      raise CheckpointAccessError(
          f"cannot read the checkpoint of step {step}: permission denied on {e.filename}; "
          f"fix its permissions (the checkpoint is left as it is)") from e
    except OSError as e:
      self._check_present(step)
      raise CheckpointError(f"cannot read the checkpoint of step {step} in {self.directory}: "
                            f"{e.strerror or e} ({e.filename})") from e
    for rel in sorted(set(expected) | set(actual)):
      if rel not in actual:
        problem = "is missing"
      elif rel not in expected:
        continue   # Orbax may add files after the save (e.g. metadata); not checked
      elif actual[rel][0] != expected[rel][0]:
        problem = f"holds {actual[rel][0]} bytes instead of {expected[rel][0]}"
      elif actual[rel][1] != expected[rel][1]:
        problem = "does not match its checksum (same size, other bytes)"
      else:
        continue
      raise CheckpointError(f"the checkpoint of step {step} in {self.directory} is corrupt: "
                            f"{rel} {problem}")

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              data_iterator: Optional[Any] = None) -> Any:
    """Restores the state at `step` (default: latest) into the structure of `abstract_state`.

    With `data_iterator`, also moves that Grain iterator (in place) to the saved position.
    The step's files are checked against its manifest first, and every restored value must
    be finite.

    Raises:
      CheckpointAccessError: a file of the step may not be read (permissions).
      CheckpointVanished: the step was deleted meanwhile (by a trainer's retention).
      CheckpointError: when there is no checkpoint or it cannot be read (corrupt, partial,
        non-finite, written by a different model configuration).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory}; found {self.all_steps()}")
    self._check_present(step)
    self._check_access(step)
    self.verify(step)
    self._check_present(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if not self.has_data_state(step):
        raise CheckpointError(f"the checkpoint of step {step} in {self.directory} holds no "
                              f"input-pipeline position to resume from")
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except FileNotFoundError as e:
      self._check_present(step)
      raise CheckpointError(f"cannot restore the checkpoint of step {step} in "
                            f"{self.directory}: {_one_line(e)}") from e
    except PermissionError as e:
      raise CheckpointAccessError(
          f"cannot read the checkpoint of step {step}: permission denied on {e.filename}; "
          f"fix its permissions (the checkpoint is left as it is)") from e
    except Exception as e:  # Orbax raises many types for unreadable data.
      self._check_present(step)
      if "PERMISSION_DENIED" in str(e):
        raise CheckpointAccessError(
            f"cannot read the checkpoint of step {step} in {self.directory}: permission "
            f"denied ({_one_line(e, 200)}); fix its permissions") from e
      raise CheckpointError(
          f"cannot restore the checkpoint of step {step} in {self.directory}: "
          f"{type(e).__name__}: {_one_line(e)}") from e
    bad, total = count_non_finite(restored.state)
    if bad:
      raise CheckpointError(f"the checkpoint of step {step} in {self.directory} holds "
                            f"{bad:,} non-finite value(s) (NaN or infinite) of {total:,}")
    return restored.state

  def restore_latest_good(self, abstract_state: Any,
                          data_iterator_factory: Optional[Any] = None,
                          warn: Any = None) -> tuple[int, Any, Optional[Any]]:
    """Restores the newest checkpoint that reads back and is intact, falling back to older
    ones.

    Args:
      abstract_state: the structure (and shardings) to restore into.
      data_iterator_factory: called once per attempt for a fresh Grain iterator whose
        position is restored with the state (None: state only).
      warn: called with a one-line message for each checkpoint that cannot be read or is
        corrupt (default: print to stderr).

    Returns:
      `(step, state, data_iterator)` of the newest good checkpoint.

    Raises:
      CheckpointAccessError: a checkpoint may not be read (permissions); nothing is renamed.
      CheckpointError: naming the directory and each checkpoint's problem, when none reads.
    """
    if warn is None:
      warn = lambda message: print(f"warning: {message}", file=sys.stderr, flush=True)
    problems, unreadable = [], []
    for step in reversed(self.all_steps()):
      iterator = data_iterator_factory() if data_iterator_factory else None
      try:
        state = self.restore(abstract_state, step, data_iterator=iterator)
      except CheckpointAccessError:
        raise
      except CheckpointVanished:   # deleted meanwhile: not corrupt, nothing to set aside
        continue
      except CheckpointError as e:
        problems.append(f"step {step}: {e}")
        unreadable.append(step)
        warn(f"skipping unreadable checkpoint: {e}")
        if iterator is not None and hasattr(iterator, "close"):
          iterator.close()
        continue
      if unreadable:
        self._set_aside(unreadable)
      import jax   # pylint: disable=g-import-not-at-top
      if self.manifest(step) is None and jax.process_index() == 0:
        with contextlib.suppress(OSError):   # read back whole and finite: now verified
          self._write_manifest(step, True)
      return step, state, iterator
    if not problems:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    raise CheckpointError(f"no readable checkpoint in {self.directory}: "
                          + "; ".join(problems))

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable step directories to `STEP.unreadable` (kept for inspection, out
    of the manager's way), so training can save those steps again."""
    import jax   # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if _remote(path):
          if epath.Path(path).is_dir():
            target, n = f"{path}.unreadable", 1
            while epath.Path(target).exists():
              target, n = f"{path}.unreadable{n}", n + 1
            epath.Path(path).rename(target)
          continue
        if os.path.isdir(path):
          target, n = f"{path}.unreadable", 1
          while os.path.exists(target):
            target, n = f"{path}.unreadable{n}", n + 1
          os.rename(path, target)
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished (and seals them)."""
    with self._write_errors(self._in_flight):
      self._manager.wait_until_finished()
      self._seal()
    self._in_flight = None

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    try:
      self.wait()
    finally:
      self._manager.close()
