"""Per-device memory of the full train step on a simulated mesh, from the compiled program (no real arrays).

    python scripts/plan_memory.py --gin_file=configs/pretrain_ankh_large.gin --devices=64 [--mesh=1,-1,1]
        [--batch=1024] [--hbm_gib=32] [--gin.NAME=VALUE ...]

It fakes ``--devices`` CPU devices (XLA_FLAGS, set before jax is imported), reads the model, optimizer, mesh,
batch and lengths from the same gin files as ``python -m ankh_jax.train``, builds the train state as abstract
shapes (``jax.ShapeDtypeStruct`` with shardings), lowers and compiles exactly the jitted train step the trainer
runs (``ankh_jax.train_steps``), and prints ``compiled.memory_analysis()`` per device: arguments (parameters,
optimizer state, batch), outputs, temporaries, donated (aliased) bytes and the peak estimate
``arguments + outputs - aliased + temporaries``.

Caveat: the program is compiled by XLA:CPU, whose fusion and scheduling differ from XLA:TPU; bf16 may be widened
on CPU, so the estimate is usually conservative for activations. The state sizes are exact.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GIB = 1024 ** 3


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin_search_paths", default="")
    parser.add_argument("--devices", type=int, default=64, help="simulated devices (a v4-128 has 64 chips)")
    parser.add_argument("--mesh", default=None, help="data,fsdp,model (overrides Partitioner.mesh_shape)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (overrides train.global_batch_size)")
    parser.add_argument("--hbm_gib", type=float, default=32.0, help="device memory to compare against")
    args, rest = parser.parse_known_args(argv)
    bindings = []
    for flag in rest:
        if flag.startswith("--gin.") and "=" in flag:
            name, value = flag[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            parser.error(f"unknown argument {flag}")
    return args, bindings


def main(argv=None) -> int:
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import gin
    import jax
    import jax.numpy as jnp

    from ankh_jax.model.network import Transformer
    from ankh_jax.optim import make_optimizer, make_schedule
    from ankh_jax.partitioning import Partitioner
    from ankh_jax.train import parse_gin
    from ankh_jax.train_steps import StateLayout, make_train_step

    if args.mesh:
        bindings.append(f"Partitioner.mesh_shape = ({args.mesh},)")
    bindings.append("MODEL_DIR = '/unused'")
    parse_gin(args.gin_file, bindings, [p for p in args.gin_search_paths.split(",") if p])

    def query(name):
        return copy.deepcopy(gin.query_parameter(name))  # deepcopy evaluates macros and @references

    config = query("train.model_config")
    batch = args.batch or query("train.global_batch_size")
    lengths = dict(query("train.feature_lengths"))
    if "targets" not in lengths:
        from ankh_jax.data.span_corruption import targets_length_for

        lengths["targets"] = targets_length_for(lengths["inputs"])
    micro = query("train.num_microbatches")
    partitioner = Partitioner()
    schedule = make_schedule()
    tx = make_optimizer(schedule)
    model = Transformer(config)
    layout = StateLayout(model, tx, partitioner)
    state = layout.abstract_state()
    bs = partitioner.batch_sharding()
    enc, dec = lengths["inputs"], lengths["targets"]
    abstract_batch = {
        "encoder_input_tokens": jax.ShapeDtypeStruct((batch, enc), jnp.int32, sharding=bs),
        "decoder_input_tokens": jax.ShapeDtypeStruct((batch, dec), jnp.int32, sharding=bs),
        "decoder_target_tokens": jax.ShapeDtypeStruct((batch, dec), jnp.int32, sharding=bs),
        "decoder_loss_weights": jax.ShapeDtypeStruct((batch, dec), jnp.float32, sharding=bs),
    }
    step_fn = make_train_step(model, tx, schedule, num_microbatches=micro,
                              enable_dropout=config.dropout_rate > 0)
    jitted = jax.jit(step_fn, in_shardings=(layout.state_shardings, bs, partitioner.replicated()),
                     out_shardings=(layout.state_shardings, partitioner.replicated()), donate_argnums=(0,))
    print(f"model: d_model {config.d_model}, {config.num_encoder_layers}+{config.num_decoder_layers} layers, "
          f"{config.num_params() / 1e9:.3f}B params, compute {config.dtype}, params {config.param_dtype}, "
          f"scan_layers={config.scan_layers}, remat={config.remat_policy}")
    print(f"{partitioner.describe()}; global batch {batch} x {enc} inputs / {dec} targets, "
          f"{micro} micro-batch(es)")
    t = time.perf_counter()
    with partitioner.activate():
        lowered = jitted.lower(state, abstract_batch, jax.random.key(0))
    compiled = lowered.compile()
    print(f"lowered and compiled the train step in {time.perf_counter() - t:.0f} s")
    mem = compiled.memory_analysis()
    state_bytes = sum(_per_device_bytes(x) for x in jax.tree_util.tree_leaves(state))
    rows = [
        ("train state (params + optimizer), exact", state_bytes),
        ("arguments (state + batch)", mem.argument_size_in_bytes),
        ("outputs", mem.output_size_in_bytes),
        ("donated / aliased", -mem.alias_size_in_bytes),
        ("temporaries (activations, grads, ...)", mem.temp_size_in_bytes),
    ]
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'per device':<{width}}{'GiB':>10}")
    print("-" * (width + 10))
    for name, value in rows:
        print(f"{name:<{width}}{value / GIB:>10.2f}")
    print("-" * (width + 10))
    print(f"{'peak estimate':<{width}}{peak / GIB:>10.2f}")
    fits = peak < args.hbm_gib * GIB
    print(f"\n{'FITS' if fits else 'DOES NOT FIT'} under {args.hbm_gib:g} GiB per device "
          f"({100 * peak / (args.hbm_gib * GIB):.0f}% used)")
    return 0 if fits else 1


def _per_device_bytes(x) -> int:
    shard = x.sharding.shard_shape(x.shape)
    return math.prod(shard) * x.dtype.itemsize


if __name__ == "__main__":
    sys.exit(main())
