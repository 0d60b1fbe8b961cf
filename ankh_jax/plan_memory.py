"""Per-device memory of the trainer's own train step, compiled ahead of time for a target, with no arrays anywhere.

    python -m ankh_jax.plan_memory --gin_file=configs/pretrain_ankh_large.gin [--target=tpu:v4:4x4x4 | cpu:64]
        [--mesh=1,-1,1] [--batch=1024] [--hbm_gib=32] [--find_max_batch [--max_compiles=5]] [--json=OUT.json]
        [--gin.NAME=VALUE ...]

It reads the model, optimizer, mesh, batch and lengths from the same gin files as ``python -m ankh_jax.train``
(``ProgramConfig`` and ``DataConfig``, as the trainer does),
builds the trainer's program with :func:`ankh_jax.training.program.build_program` (the very jitted step the trainer
runs, not a copy), lowers it on abstract state, batch and rng key, compiles it for the target and prints
``compiled.memory_analysis()`` per device: arguments (parameters, optimizer state, batch), outputs, temporaries,
donated (aliased) bytes and the peak ``arguments + outputs - aliased + temporaries``.

Targets:
* ``tpu:v4:4x4x4`` (any ``tpu:<generation>:<topology>``): XLA:TPU itself compiles for an abstract TPU topology
  (``jax.experimental.topologies``; needs libtpu, ``pip install -e '.[tpu]'``, but no TPU). v4 and v5p chips are
  one jax device each (megacore: both TensorCores of a chip act as one device), as on a real pod, so
  ``v4:4x4x4`` is 64 devices, a v4-128 slice.
* ``cpu:N`` (the default, ``cpu:64``): N simulated CPU devices compiled by XLA:CPU, whose fusion and scheduling
  differ from XLA:TPU; activations are usually overestimated. The state sizes are exact either way.

``--find_max_batch`` also reports the largest global batch that fits ``--hbm_gib``: memory is affine in the batch,
so it compiles at two batches, extrapolates, and confirms the prediction with a third compile.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time

from ankh_jax import flags

PROG = "python -m ankh_jax.plan_memory"
GIB = 1024 ** 3
MEGACORE = ("v4", "v5p")


def _add_arguments(parser):
    parser.add_argument("--target", default=None, help="tpu:<generation>:<topology> or cpu:<devices> (default cpu:64)")
    parser.add_argument("--devices", type=int, default=None, help="same as --target=cpu:N (kept for old commands)")
    parser.add_argument("--mesh", default=None, help="data,fsdp,model (overrides Partitioner.mesh_shape)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (overrides DataConfig.global_batch_size)")
    parser.add_argument("--hbm_gib", type=float, default=32.0, help="device memory to compare against")
    parser.add_argument("--find_max_batch", action="store_true")
    parser.add_argument("--max_compiles", type=int, default=5, help="compiles --find_max_batch may spend")
    parser.add_argument("--json", default=None, help="also write the results here")


def parse_args(argv):
    args = flags.parse(argv, prog=PROG, description=__doc__.split("\n\n")[0], add_arguments=_add_arguments)
    target = args.target or f"cpu:{args.devices or 64}"
    kind, _, rest_target = target.partition(":")
    if kind not in ("cpu", "tpu") or not rest_target:
        print(f"{PROG}: error: --target={target}: expected tpu:<generation>:<topology> or cpu:<devices>",
              file=sys.stderr)
        sys.exit(flags.EXIT_BAD_INPUT)
    return args, target


def target_devices(target: str):
    """The devices to compile for: abstract TPU devices of a topology, or this process's (fake) CPU devices."""
    import jax

    kind, _, spec = target.partition(":")
    if kind == "cpu":
        return jax.devices()
    from jax.experimental import topologies

    generation = spec.split(":")[0]
    kwargs = {"chip_config_name": "megacore"} if generation in MEGACORE else {}
    return topologies.get_topology_desc(topology_name=spec, platform="tpu", **kwargs).devices


def compile_step(program, batch: int, lengths: dict, packed: bool = False) -> tuple[dict, float]:
    """Memory of the compiled step at ``batch``; XLA:TPU refuses a program over the chip's HBM (peak: inf)."""
    import jax

    t = time.perf_counter()
    try:
        compiled = program.lower_train_step(batch, lengths["inputs"], lengths["targets"], packed).compile()
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        seconds = time.perf_counter() - t
        print(f"  batch {batch}: the compiler refused it: {str(err).splitlines()[0][:200]}")
        return {"batch": batch, "peak": math.inf, "compile_s": round(seconds, 1), "refused": True}, seconds
    seconds = time.perf_counter() - t
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return {"batch": batch, "arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
            "aliased": mem.alias_size_in_bytes, "temporaries": mem.temp_size_in_bytes, "peak": peak,
            "compile_s": round(seconds, 1)}, seconds


def main(argv=None) -> int:
    args, target = parse_args(argv)
    bindings = list(args.gin_bindings)
    if target.startswith("cpu:"):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={int(target[4:])}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"  # nothing here runs on (or opens) an accelerator
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # libtpu is only a compiler here: no TPU to claim, so no single-user lock file, and no metadata server to ask.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

    import jax

    from ankh_jax.train import GIN_MODULES
    from ankh_jax.training.partitioning import Partitioner
    from ankh_jax.training.program import build_program
    from ankh_jax.training.run_config import DataConfig, ProgramConfig

    if args.mesh:
        bindings.append(f"Partitioner.mesh_shape = ({args.mesh},)")
    bindings.append("MODEL_DIR = '/unused'")
    args.gin_bindings = bindings
    if not flags.configure(PROG, args, modules=GIN_MODULES):
        return flags.EXIT_BAD_INPUT

    from ankh_jax.storage.home import enable_compilation_cache

    enable_compilation_cache()  # a second plan of the same program loads it instead of compiling
    settings, data = ProgramConfig(), DataConfig()  # the trainer's own settings, as gin binds them
    config = settings.model_config
    batch = args.batch or data.global_batch_size
    lengths = dict(data.feature_lengths)
    if "targets" not in lengths:
        from ankh_jax.data.span_corruption import targets_length_for

        lengths["targets"] = targets_length_for(lengths["inputs"])
    devices = target_devices(target)
    partitioner = Partitioner(devices=devices)
    program = build_program(settings, partitioner)
    print(f"target {target}: {len(devices)} {devices[0].device_kind} devices")
    print(f"model: d_model {config.d_model}, {config.num_encoder_layers}+{config.num_decoder_layers} layers, "
          f"{config.num_params() / 1e9:.3f}B params, compute {config.dtype}, params {config.param_dtype}, "
          f"scan_layers={config.scan_layers}, remat={config.remat_policy}")
    print(f"{partitioner.describe()}; global batch {batch} x {lengths['inputs']} inputs / {lengths['targets']} "
          f"targets, {settings.num_microbatches} micro-batch(es)")
    result, seconds = compile_step(program, batch, lengths, data.pack)
    print(f"lowered and compiled the trainer's train step in {seconds:.0f} s")
    if result.get("refused"):
        print(f"DOES NOT FIT: the compiler refused batch {batch}")
        return 1
    state_bytes = sum(_per_device_bytes(x) for x in jax.tree_util.tree_leaves(program.layout.abstract_state()))
    _print_table(state_bytes, result)
    limit = args.hbm_gib * GIB
    fits = result["peak"] < limit
    print(f"\n{'FITS' if fits else 'DOES NOT FIT'} under {args.hbm_gib:g} GiB per device "
          f"({100 * result['peak'] / limit:.0f}% used)")
    opt_floats = optimizer_floats_per_param(state_bytes, len(devices), config.num_params())
    print(f"optimizer state: {opt_floats:.3f} floats per parameter (state bytes x devices / (4 x params) - 1)")
    report = {"target": target, "devices": len(devices), "device_kind": devices[0].device_kind,
              "mesh": dict(partitioner.mesh.shape), "gin_files": args.gin_file, "bindings": bindings,
              "params": config.num_params(), "lengths": lengths, "state_bytes": state_bytes,
              "optimizer_floats_per_param": opt_floats, "runs": [result]}
    if args.find_max_batch:
        found = _find_max_batch(program, batch, lengths, limit, partitioner.batch_shards, report["runs"],
                                max_compiles=args.max_compiles, packed=data.pack)
        report["max_batch"] = found
        print(f"largest global batch found under {args.hbm_gib:g} GiB per device: {found['fits']} "
              f"(smallest tried that does not fit: {found['does_not_fit']})")
    if args.json:
        report.update(command=" ".join([PROG] + sys.argv[1:]),
                      commit=_commit(), jax=jax.__version__, machine=f"{platform.processor() or platform.machine()}, "
                                                                    f"{os.cpu_count()} cores")
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if fits else 1


def _print_table(state_bytes: int, result: dict) -> None:
    table = [("train state (params + optimizer), exact", state_bytes),
             ("arguments (state + batch)", result["arguments"]), ("outputs", result["outputs"]),
             ("donated / aliased", -result["aliased"]), ("temporaries (activations, grads, ...)", result["temporaries"])]
    width = max(len(r[0]) for r in table) + 2
    print(f"\n{'per device':<{width}}{'GiB':>10}\n" + "-" * (width + 10))
    for name, value in table:
        print(f"{name:<{width}}{value / GIB:>10.2f}")
    print("-" * (width + 10) + f"\n{'peak estimate':<{width}}{result['peak'] / GIB:>10.2f}")


def optimizer_floats_per_param(state_bytes: int, devices: int, params: int) -> float:
    """The optimizer state's size in float32s per parameter, from the per-device train state (parameters are
    float32; a replicated leaf counts once per device, as it costs)."""
    return state_bytes * devices / (4 * params) - 1


def _find_max_batch(program, batch: int, lengths: dict, limit: float, quantum: int, runs: list,
                    max_compiles: int = 5, packed: bool = False) -> dict:
    """The largest batch (a multiple of ``quantum``) that fits, within 1/16: an affine fit of memory against the
    batch through two compiles proposes it, then each compile narrows the bracket [fits, does not fit]."""
    fits = lambda r: r["peak"] < limit
    lo = batch if fits(runs[0]) else 0
    hi = None if fits(runs[0]) else batch
    probe = batch * 4 if lo else max(quantum, batch // 4 // quantum * quantum)
    for _ in range(max_compiles):
        if hi is not None and hi - lo <= max(quantum, lo // 16):
            break
        result, _ = compile_step(program, probe, lengths, packed)
        runs.append(result)
        print(f"  batch {probe}: {result['peak'] / GIB:.2f} GiB per device ({result['compile_s']:.0f} s compile)")
        if fits(result):
            lo = max(lo, probe)
        else:
            hi = probe if hi is None else min(hi, probe)
        measured = sorted((r["batch"], r["peak"]) for r in runs if math.isfinite(r["peak"]))
        if len(measured) >= 2 and hi is None:  # extrapolate from the two largest measured batches
            (b0, p0), (b1, p1) = measured[-2], measured[-1]
            slope = (p1 - p0) / (b1 - b0) if b1 != b0 else 0
            guess = b1 + (limit - p1) / slope if slope > 0 else 2 * b1
            probe = int(min(max(guess, lo * 1.25), lo * 16)) // quantum * quantum
        elif hi is None:
            probe = lo * 2
        else:
            probe = (lo + hi) // 2 // quantum * quantum
        if probe <= lo or (hi is not None and probe >= hi):
            break
    return {"fits": lo, "does_not_fit": hi}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _per_device_bytes(x) -> int:
    shard = x.sharding.shard_shape(x.shape)
    return math.prod(shard) * x.dtype.itemsize


if __name__ == "__main__":
    sys.exit(main())
