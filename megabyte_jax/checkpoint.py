"""Orbax checkpointing of the training state in `WORKDIR/checkpoints`."""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp

from megabyte_jax.errors import CheckpointError

CHECKPOINT_SUBDIR = "checkpoints"


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep`, restores latest.

  A thin layer over `ocp.CheckpointManager` with one item, `state` (room is left for more
  items, such as a data iterator, in the same step directory).
  """

  def __init__(self, workdir: str, save_every: int = 1000, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_SUBDIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state",))

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves `state` at `step` if the interval says so (always with `force`)."""
    return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                              force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores the state at `step` (default: latest) into the structure of `abstract_state`.

    Raises:
      CheckpointError: when there is no checkpoint or it cannot be read (corrupt, partial,
        written by a different model configuration).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    if step not in self._manager.all_steps():
      raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory}; found {self.all_steps()}")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # Orbax raises many types for unreadable data.
      raise CheckpointError(
          f"cannot restore the checkpoint of step {step} in {self.directory}: "
          f"{type(e).__name__}: {e}") from e
    return restored.state

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
