"""Device meshes and the one table that maps logical axis names onto them.

Every parameter, activation constraint and KV cache in the package carries logical axis
names (`megabyte_jax.layers`): `embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`,
`activation_batch`, `activation_length`, `activation_embed`, and the caches' own
`cache_batch`, `cache_length`, `cache_heads`, `cache_kv`. A `jax.sharding.Mesh` has physical
axes; `LOGICAL_RULES` below is the only place that says which logical axis lives on which
mesh axis:

  data    pure data parallelism: the batch is split, parameters are replicated;
  fsdp    data parallelism with parameters, gradients and optimizer state split as well
          (ZeRO-3 style; the `embed` axis of every weight is sharded, gathered per use);
  tensor  tensor (model) parallelism: attention heads and the MLP's hidden units are split.

So switching between data parallel, FSDP and tensor parallel is a change of `config.mesh`
(e.g. `{data: -1}`, `{fsdp: -1}`, `{data: 2, tensor: 4}`), never of model code. `-1` takes
the devices the other axes leave. The same program runs on one CPU (a 1x1x1 mesh), eight
emulated CPU devices, GPUs, or a multi-host TPU slice (`jax.devices()` spans all hosts).

A run may override or extend that table from its config (`config.mesh_rules`, applied by
`logical_rules`), as Flax's lm1b example and MaxText allow; the table stays the default.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from megabyte_jax.errors import ConfigError
from megabyte_jax.models.levels import level_specs

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or axes, or None: replicated). The only sharding table.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),   # batches split over every data-like axis
    ("activation_length", None),
    ("activation_embed", None),
    ("cache_batch", ("data", "fsdp")),        # decode caches: batch like the activations,
    ("cache_length", None),
    ("cache_heads", "tensor"),                # heads like the attention weights
    ("cache_kv", None),
    ("embed", "fsdp"),                        # FSDP: weights split along the model width
    ("mlp", "tensor"),                        # tensor parallel: MLP hidden units ...
    ("heads", "tensor"),                      # ... and attention heads
    ("kv", None),
    ("vocab", None),                          # 256 byte ids: not worth splitting
    ("layers", None),                         # the stacked axis of `scan_layers`
)

Rules = tuple[tuple[str, Any], ...]


def _rule_target(name: str, target: Any) -> Any:
  """A rule's mesh axis (a name, None, or a tuple of distinct names), checked."""
  if target is None:
    return None
  axes = (target,) if isinstance(target, str) else target
  if not isinstance(axes, (tuple, list)) or not axes \
      or not all(isinstance(axis, str) for axis in axes):
    raise ConfigError(f"mesh_rules: {name!r} must map to a mesh axis name, a list of them or "
                      f"None, got {target!r}")
  unknown = [axis for axis in axes if axis not in MESH_AXES]
  if unknown:
    raise ConfigError(f"mesh_rules: {name!r} maps to unknown mesh axis {unknown[0]!r}; the "
                      f"axes are {list(MESH_AXES)}")
  if len(set(axes)) != len(axes):
    raise ConfigError(f"mesh_rules: {name!r} names a mesh axis twice: {list(axes)}")
  return target if isinstance(target, str) else tuple(axes)


def logical_rules(overrides: Optional[Sequence[Any]] = None) -> Rules:
  """`LOGICAL_RULES` with `overrides` applied (`config.mesh_rules`).

  `overrides` is a sequence of `(logical_name, mesh_axis)` pairs, the mesh axis being one
  of `MESH_AXES`, a sequence of them, or None (replicated): a pair for a logical name of
  `LOGICAL_RULES` replaces that rule where it stands, any other is appended. E.g.
  `(("mlp", None),)` keeps the MLP's hidden units whole on every device.

  Raises:
    ConfigError: an entry that is not a pair, a logical name given twice, or an unknown
      mesh axis (one line naming it).
  """
  changed: dict[str, Any] = {}
  for entry in overrides or ():
    if isinstance(entry, (str, bytes)) or not isinstance(entry, (tuple, list)) \
        or len(entry) != 2 or not isinstance(entry[0], str):
      raise ConfigError(f"mesh_rules entries must be (logical_name, mesh_axis) pairs, got "
                        f"{entry!r}")
    name, target = entry
    if name in changed:
      raise ConfigError(f"mesh_rules: {name!r} is given twice")
    changed[name] = _rule_target(name, target)
  rules = tuple((name, changed.pop(name, target)) for name, target in LOGICAL_RULES)
  return rules + tuple(changed.items())


def mesh_shape(mesh_cfg: Optional[Mapping[str, int]], num_devices: int) -> dict[str, int]:
  """Sizes of the mesh axes from `config.mesh` (missing axes are 1, one `-1` fills in).

  Raises:
    ConfigError: unknown axes, sizes below -1 or 0, more than one -1, or sizes whose
      product is not the number of devices.
  """
  cfg = dict(mesh_cfg or {})
  unknown = sorted(set(cfg) - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"unknown mesh axes {unknown}; the axes are {list(MESH_AXES)}")
  sizes = {axis: cfg.get(axis, 1) for axis in MESH_AXES}
  for axis, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(f"mesh.{axis} must be a positive integer or -1, got {size!r}")
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ConfigError(f"only one mesh axis may be -1, got {fill}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % fixed:
      raise ConfigError(f"mesh {cfg} cannot fill {num_devices} devices: the fixed axes use "
                        f"{fixed}, which does not divide {num_devices}")
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"mesh {sizes} has {math.prod(sizes.values())} devices, but "
                      f"{num_devices} are available; use -1 for one axis to fill them")
  return sizes


def make_mesh(mesh_cfg: Optional[Mapping[str, int]] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A `Mesh` with axes `MESH_AXES` over `devices` (default: all devices of all hosts).

  Devices are laid out by `jax.experimental.mesh_utils` where it knows the topology (TPU
  slices, NVLink GPU hosts), so that the innermost axes (`tensor`, then `fsdp`) get the
  fastest links; otherwise in device order.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_cfg, len(devices))
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  try:
    from jax.experimental import mesh_utils   # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(shape, devices=devices,
                                         allow_split_physical_axes=True)
  except Exception:   # pylint: disable=broad-except  # unknown topology: device order
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def check_model_fits_mesh(model_cfg: Any, mesh: Mesh) -> None:
  """Refuses a tensor-parallel axis that does not divide the attention heads or the MLP
  width of every transformer stack of the model (`MegabyteConfig` or `TransformerConfig`;
  every level, `models.levels.level_specs`).

  Raises:
    ConfigError: naming the stack, its head count (or MLP width) and the tensor axis size.
  """
  size = mesh.shape["tensor"]
  if size == 1:
    return
  for level in level_specs(model_cfg):
    spec, field = level.stack, (f"model.{level.name}_heads" if level.name else "model.heads")
    if level.name.startswith("level_"):
      field = f"model.mid_heads[{level.index - 1}]"
    stack = f"the {level.name} model" if level.name else "the model"
    if spec.heads % size:
      raise ConfigError(f"{field}={spec.heads} is not divisible by the mesh's tensor axis "
                        f"({size}): tensor parallelism splits attention heads; use a tensor "
                        f"size that divides {spec.heads}, or put the devices on data/fsdp")
    if spec.mlp_dim % size:
      raise ConfigError(f"the MLP width of {stack}, {spec.mlp_dim}, is not divisible by the "
                        f"mesh's tensor axis ({size})")


def logical_sharding(spec: Any, mesh: Mesh,
                     rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """Maps a tree of logical `PartitionSpec`s (as `nn.get_partition_spec` gives) to a tree of
  `NamedSharding`s on `mesh` under `rules`."""
  return nn.logical_to_mesh_sharding(spec, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array held whole on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES
                   ) -> NamedSharding:
  """The sharding of a `[batch, length]` batch of bytes: batch split like activations."""
  return logical_sharding(PartitionSpec("activation_batch", None), mesh, rules)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """`spec` (of mesh axes) with every dimension that its mesh axes do not divide evenly
  left whole (replicated) instead: e.g. 2 attention heads on a `tensor` axis of 8."""
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  fitted = []
  for dim, axes in zip(shape, entries):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = math.prod(mesh.shape[name] for name in names)
    fitted.append(axes if size and dim % size == 0 else None)
  return PartitionSpec(*fitted)


def param_shardings(boxed_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """`NamedSharding`s for a parameter tree that still carries its logical names (boxed,
  e.g. from `jax.eval_shape(model.init, ...)["params"]`).

  Each parameter's logical axes are mapped through `rules`; a dimension that its mesh axes
  do not divide evenly stays whole (`fit_spec`), so any mesh runs any model, sharding what
  divides.
  """
  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      spec = nn.logical_to_mesh_axes(leaf.names, rules)
      return NamedSharding(mesh, fit_spec(spec, leaf.value.shape, mesh))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(one, boxed_params,
                                is_leaf=lambda x: isinstance(x, nn.Partitioned))


def shard_batch(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Builds the global batch from this host's rows (`[batch / hosts, length]`).

  On one host this is a plain sharded `device_put`; on several, every host passes its own
  rows and gets back the same global array (`jax.make_array_from_process_local_data`).
  """
  return jax.make_array_from_process_local_data(sharding, np.asarray(local_batch))


def distributed_requested() -> bool:
  """Whether the environment asks for a multi-process run: JAX's coordinator variables,
  a multi-host Cloud TPU slice, or a multi-task SLURM job."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS"):
    return True
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS")
  if hosts and "," in hosts:
    return True
  return int(env.get("SLURM_NTASKS", "1") or 1) > 1


def maybe_initialize_distributed(force: Optional[bool] = None) -> bool:
  """Calls `jax.distributed.initialize()` once when `distributed_requested()` (or when
  `force` is True; `force=False` never does).

  The coordinator address, process count and this process's id come from
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` where set; on Cloud
  TPU and SLURM `jax.distributed.initialize` detects them itself. Returns whether this process is part of a
  multi-process run.
  """
  if force is False or (force is None and not distributed_requested()):
    return False
  if jax.distributed.is_initialized():
    return True
  env, kwargs = os.environ, {}
  if env.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if env.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  return True
