"""Orbax checkpointing of the training state in `WORKDIR/checkpoints`."""

from __future__ import annotations

import os
from typing import Any, Optional

import grain
import orbax.checkpoint as ocp

from megabyte_jax.errors import CheckpointError

CHECKPOINT_SUBDIR = "checkpoints"


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep`, restores latest.

  A thin layer over `ocp.CheckpointManager` with two items per step: `state` (the training
  state pytree) and, when given, `data` (the Grain input iterator's position), so that a
  resumed run continues the input stream exactly where it stopped.
  """

  def __init__(self, workdir: str, save_every: int = 1000, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_SUBDIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Optional[Any] = None,
           force: bool = False) -> bool:
    """Saves `state` (and the Grain `data_iterator`'s position) at `step` if the interval
    says so (always with `force`)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def has_data_state(self, step: int) -> bool:
    """Whether the checkpoint of `step` holds a data iterator position."""
    return os.path.isdir(os.path.join(self.directory, str(step), "data"))

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              data_iterator: Optional[Any] = None) -> Any:
    """Restores the state at `step` (default: latest) into the structure of `abstract_state`.

    With `data_iterator`, also moves that Grain iterator (in place) to the saved position.

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
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if not self.has_data_state(step):
        raise CheckpointError(f"the checkpoint of step {step} in {self.directory} holds no "
                              f"input-pipeline position to resume from")
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
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
