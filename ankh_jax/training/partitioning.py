"""The device mesh, logical axis rules, sharded initialisation and global batches.

Sharding is written once, t5x-style: the model names the axes of every parameter and key activation
(``embed``, ``heads``, ``mlp``, ``vocab``, ``batch``, ...); the rules below map those logical names onto the three
mesh axes ``data`` / ``fsdp`` / ``model``; and plain ``jax.jit`` with in/out shardings does the rest.

* ``data``: pure data parallelism (parameters replicated across it).
* ``fsdp``: data parallelism that also shards parameters and optimizer state over ``embed`` (ZeRO-3 / FSDP).
* ``model``: tensor parallelism over attention heads, feed-forward width and the vocabulary.

Both the mesh shape and the rules are gin-configurable (``Partitioner.mesh_shape``, ``Partitioner.axis_rules``).
A dimension whose size does not divide the mesh axes it would be sharded over is replicated instead (and reported
by :meth:`Partitioner.describe`), so small test models run on any mesh.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ankh_jax.errors import InputError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")

# (logical name, mesh axis or axes). Order matters: the first rule whose mesh axes are still free wins, so in an
# activation [batch, length, embed] the batch takes (data, fsdp) and embed stays replicated, while in a parameter
# [embed, mlp] embed takes fsdp and mlp takes model.
DEFAULT_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
)


@gin.configurable
def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 100, initialization_timeout_seconds: int = 300) -> None:
    """Calls ``jax.distributed.initialize`` for multi-host runs.

    mode: ``auto`` (when a coordinator is given, by gin or ``JAX_COORDINATOR_ADDRESS``, or the TPU VM lists several
    workers in ``TPU_WORKER_HOSTNAMES``), ``always`` (the TPU pod configs: on Cloud TPU VMs jax discovers the
    coordinator, process count and id by itself, also on a single host) or ``never``.

    Anywhere else (CPU or GPU hosts, TPU VMs without metadata) set ``JAX_COORDINATOR_ADDRESS=host:port`` (process
    0's address), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on every process, or the matching gin bindings.
    On the CPU the cross-process collectives run over gloo (set here, before jax starts its backends).

    heartbeat_timeout_seconds: a process that stops answering (killed, host lost) is declared dead after this
    long, and jax then terminates every other process of the job with an error naming it, so a lost host stops
    the job in bounded time instead of leaving the rest blocked in a collective.
    """
    if mode not in ("auto", "always", "never"):
        raise InputError(f"initialize_distributed.mode={mode!r}: expected auto, always or never")
    if mode == "never" or jax.distributed.is_initialized():
        return
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    multi_host_tpu = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
    if mode == "auto" and coordinator_address is None and not multi_host_tpu:
        return
    num_processes = num_processes or _int_env("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                               initialization_timeout=initialization_timeout_seconds)
    log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())


_barriers: dict[str, int] = {}


def wait_for_all_processes(name: str, timeout_seconds: int = 1800) -> None:
    """A barrier of jax's coordination service across all processes: no device collective, so a slow host only
    delays the others (a collective would give up after 30 s on gloo); a no-op on one process. ``name`` may be
    reused: a count makes each barrier unique, as the service requires."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client has no public accessor; orbax reaches it the same way

    _barriers[name] = _barriers.get(name, 0) + 1
    distributed.global_state.client.wait_at_barrier(f"{name}_{_barriers[name]}", timeout_seconds * 1000)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces at most one -1 in ``mesh_shape`` by what is left of ``num_devices``; checks the product."""
    shape = [int(s) for s in mesh_shape]
    if len(shape) != len(MESH_AXES):
        raise InputError(f"mesh_shape {tuple(mesh_shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise InputError(f"mesh_shape {tuple(mesh_shape)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise InputError(f"mesh_shape {tuple(mesh_shape)}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise InputError(f"mesh_shape {tuple(mesh_shape)} does not divide the {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise InputError(f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices, but {num_devices} are "
                         f"available")
    return tuple(shape)


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    try:  # Topology-aware placement on TPU; a plain reshape elsewhere.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


@gin.configurable
class Partitioner:
    """Owns the mesh and the logical axis rules; turns logical names into shardings.

    Args:
      mesh_shape: sizes of (data, fsdp, model); one may be -1 for "all remaining devices".
      axis_rules: logical axis rules, see ``DEFAULT_AXIS_RULES``.
      devices: the devices to use (default: all of them). Tests pass ``jax.devices()[:1]``.
      activation_constraints: apply the model's logical activation constraints (see :meth:`activate`).
    """

    def __init__(self, mesh_shape: Sequence[int] = (-1, 1, 1),
                 axis_rules: Sequence[tuple[str, Any]] = DEFAULT_AXIS_RULES,
                 devices: Sequence[jax.Device] | None = None, activation_constraints: bool = True):
        self.mesh = make_mesh(mesh_shape, devices)
        self.activation_constraints = activation_constraints
        self.axis_rules = tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in axis_rules)
        self.replicated_dims: list[str] = []

    # -- contexts -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def activate(self):
        """The mesh and the rules in force while tracing a step, so the model's logical constraints apply.

        Never used around ``model.init``: parameters get their shardings from ``out_shardings`` there.
        ``activation_constraints=False`` keeps only the mesh: parameters and batch are still sharded by the
        jit in/out shardings and XLA propagates shardings to the activations by itself (with FSDP it tends to
        replicate activations, so keep the constraints on for real runs).
        """
        if not self.activation_constraints:
            with jax.set_mesh(self.mesh):
                yield
            return
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.axis_rules):
            yield

    # -- specs and shardings --------------------------------------------------------------------------------
    def mesh_spec(self, logical: PartitionSpec | None, shape: Sequence[int], name: str = "") -> PartitionSpec:
        """Logical spec -> mesh spec for an array of ``shape``; undividable dimensions fall back to replicated."""
        if logical is None:
            return PartitionSpec()
        spec = list(nn.logical_to_mesh_axes(tuple(logical), self.axis_rules))
        for d, axes in enumerate(spec):
            if axes is not None and shape[d] % _axis_size(self.mesh, axes):
                self.replicated_dims.append(f"{name} dim {d} ({logical[d]}={shape[d]}) not divisible by "
                                            f"{axes}={_axis_size(self.mesh, axes)}: replicated")
                spec[d] = None
        return PartitionSpec(*spec)

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def param_specs(self, boxed_abstract_params: Any) -> Any:
        """Mesh specs for a tree of (abstract) parameters boxed with ``nn.with_logical_partitioning``."""
        logical = nn.get_partition_spec(boxed_abstract_params)
        shapes = nn.unbox(boxed_abstract_params)
        flat_logical = jax.tree_util.tree_flatten_with_path(
            logical, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)[0]
        flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
        logical_by_path = {path: spec for path, spec in flat_logical}
        specs = [self.mesh_spec(logical_by_path.get(path), leaf.shape, jax.tree_util.keystr(path))
                 for path, leaf in flat_shapes]
        return jax.tree_util.tree_unflatten(treedef, specs)

    def optimizer_state_specs(self, abstract_opt_state: Any, abstract_params: Any, param_specs: Any,
                              factor_rules: Any = None) -> Any:
        """Mesh specs for an optax state, derived from the parameter each leaf belongs to.

        Leaves shaped like their parameter (momenta, unfactored second moments) take its spec; Adafactor's
        factored row/column statistics take it with the averaged axes dropped (``factor_rules``, the
        :class:`~ankh_jax.training.adafactor.FactorRule` per parameter, says which; without it, optax's
        two-largest-axes rule is assumed); anything else (step counts, optax's empty states) is replicated.
        """
        params_flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
        specs_flat = jax.tree_util.tree_leaves(param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        rules_flat = jax.tree_util.tree_leaves(factor_rules) if factor_rules is not None else [None] * len(specs_flat)
        by_path = {tuple(path): (leaf.shape, spec, rule)
                   for (path, leaf), spec, rule in zip(params_flat, specs_flat, rules_flat)}
        state_flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_opt_state)
        out = []
        for path, leaf in state_flat:
            out.append(_opt_leaf_spec(tuple(path), tuple(getattr(leaf, "shape", ())), by_path))
        return jax.tree_util.tree_unflatten(treedef, out)

    def batch_spec(self, ndim: int = 2) -> PartitionSpec:
        return PartitionSpec(*nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), self.axis_rules))

    def batch_sharding(self, ndim: int = 2) -> NamedSharding:
        return NamedSharding(self.mesh, self.batch_spec(ndim))

    @property
    def batch_shards(self) -> int:
        """Into how many pieces the global batch is split across devices."""
        return _axis_size(self.mesh, self.batch_spec()[0])

    # -- host data ------------------------------------------------------------------------------------------
    def host_data_shard(self, global_batch_size: int) -> tuple[int, int, int]:
        """(shard_id, num_shards, per-host batch size) of this process's slice of the global batch."""
        if global_batch_size % self.batch_shards:
            raise InputError(f"global batch size {global_batch_size} is not divisible by the {self.batch_shards} "
                             f"batch shards of mesh {dict(self.mesh.shape)}")
        indices = self.batch_sharding().addressable_devices_indices_map((global_batch_size, 1))
        starts = sorted({(idx[0].start or 0) for idx in indices.values()})
        stops = sorted({(idx[0].stop if idx[0].stop is not None else global_batch_size) for idx in indices.values()})
        lo, hi = starts[0], stops[-1]
        per_host = hi - lo
        if global_batch_size % per_host or lo % per_host:
            raise InputError(f"this process's devices hold batch rows {lo}:{hi}, which is not a regular slice of "
                             f"the global batch {global_batch_size}")
        return lo // per_host, global_batch_size // per_host, per_host

    def make_global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Per-host numpy batch -> global jax arrays sharded over the batch axes."""
        out = {}
        for key, value in local_batch.items():
            value = np.asarray(value)
            out[key] = jax.make_array_from_process_local_data(self.batch_sharding(value.ndim), value)
        return out

    def describe(self) -> str:
        """One line for the mesh, plus a summary of the dimensions left replicated because they don't divide."""
        platform = self.mesh.devices.flat[0].platform
        lines = [f"mesh {dict(self.mesh.shape)} over {self.mesh.devices.size} {platform} devices"]
        replicated = sorted(set(self.replicated_dims))
        if replicated:
            lines.append(f"{len(replicated)} parameter dimensions replicated (size not divisible by their mesh "
                         f"axes), e.g. {replicated[0]}")
        return "\n".join(lines)


def _opt_leaf_spec(path: tuple, shape: tuple, params_by_path: dict) -> PartitionSpec:
    for k in range(len(path)):
        hit = params_by_path.get(path[k:])
        if hit is None:
            continue
        p_shape, spec, rule = hit
        spec = tuple(spec) + (None,) * (len(p_shape) - len(spec))
        field = next((getattr(e, "name", None) for e in reversed(path[:k])
                      if getattr(e, "name", None) in ("v_row", "v_col", "v")), None)
        if rule is not None and field is not None:
            from ankh_jax.training.adafactor import statistics_spec

            return statistics_spec(field, rule, PartitionSpec(*spec))
        if shape == tuple(p_shape):
            return PartitionSpec(*spec)
        if len(shape) == len(p_shape) - 1:
            order = np.argsort(p_shape)  # Adafactor's factored dims: the two largest axes (optax's rule).
            preferred = {"v_row": int(order[-1]), "v_col": int(order[-2])}.get(field)
            candidates = [d for d in range(len(p_shape)) if tuple(np.delete(p_shape, d)) == shape]
            if candidates:
                drop = preferred if preferred in candidates else candidates[0]
                return PartitionSpec(*(s for d, s in enumerate(spec) if d != drop))
        return PartitionSpec()
    return PartitionSpec()
