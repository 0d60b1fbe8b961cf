"""Checkpoint save time, local disk vs gs:// (a local GCS emulator), and the training time an async save blocks.

    python scripts/bench_checkpoint.py [--saves=5] [--quick]

For each model (the tiny CPU config, and a wider one: Ankh Base width, 4 + 2 layers) the trainer's own
``Checkpointer`` saves the real train state (parameters and Adafactor state, sharded over 8 fake CPU devices)
``--saves`` times to each target: a local temporary directory, and ``gs://`` on fake-gcs-server
(``ankh_jax.storage.emulator``, in memory, on loopback). "blocked" is the time ``save()`` holds the training loop
(the device-to-host copy before the async write starts); "committed" is until the step is durable (``wait()``).
The emulator measures the protocol's request count and serialisation, not a real network: a real bucket adds
latency and bandwidth limits. Prints a table, writes benchmarks/results/bench_checkpoint-cpu-<date>.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

bench_common.fake_cpu_devices(8)


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="the tiny model only, 2 saves")
    p.add_argument("--saves", type=int, default=5, help="saves per (model, target); medians are reported")
    return p.parse_args(argv)


def train_state(config):
    import jax

    from ankh_jax.model.network import Transformer
    from ankh_jax.training.optim import make_optimizer, make_schedule
    from ankh_jax.training.partitioning import Partitioner
    from ankh_jax.training.steps import StateLayout

    tx = make_optimizer(make_schedule(peak_learning_rate=0.01, warmup_steps=2, total_steps=100))
    layout = StateLayout(Transformer(config), tx, Partitioner(mesh_shape=(-1, 1, 1)))
    return layout.create(jax.random.key(0))


def time_saves(state, model_dir: str, saves: int) -> tuple[list[float], list[float]]:
    from ankh_jax.io.checkpoints import Checkpointer

    checkpointer = Checkpointer(model_dir, save_interval_steps=1, max_to_keep=2, async_save=True)
    blocked, committed = [], []
    try:
        for step in range(1, saves + 1):
            started = time.perf_counter()
            checkpointer.save(step, state.params, state.opt_state, [{"position": step}])
            blocked.append(time.perf_counter() - started)
            checkpointer.wait()
            committed.append(time.perf_counter() - started)
    finally:
        checkpointer.close()
    return blocked, committed


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from ankh_jax.model.config import T5Config
    from ankh_jax.storage.emulator import GcsEmulator

    models = {"tiny": T5Config.tiny()}
    if not args.quick:
        models["base-width 4+2"] = T5Config.ankh_base(num_encoder_layers=4, num_decoder_layers=2)
    saves = 2 if args.quick else args.saves
    head = ["model", "parameters", "checkpoint MB", "target", "blocked ms (median)", "committed s (median)"]
    rows, raw = [], {}
    with GcsEmulator() as gcs, tempfile.TemporaryDirectory() as local_root:
        bucket = gcs.create_bucket("bench")
        for name, config in models.items():
            state = train_state(config)
            params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
            megabytes = sum(x.nbytes for x in jax.tree_util.tree_leaves((state.params, state.opt_state))) / 2**20
            time_saves(state, f"{local_root}/warmup_{len(raw)}", 1)  # compiles the fingerprint, starts orbax
            for target, root in (("local", local_root), ("gs:// (emulator)", bucket)):
                model_dir = f"{root}/{name.replace(' ', '_').replace('+', '_')}"
                blocked, committed = time_saves(state, model_dir, saves)
                raw[f"{name} / {target}"] = {"blocked_s": blocked, "committed_s": committed}
                rows.append([name, params, round(megabytes, 1), target,
                             round(1000 * statistics.median(blocked), 1), round(statistics.median(committed), 3)])
                print(bench_common.format_table(head, rows[-1:]), flush=True)
    print(bench_common.format_table(head, rows))
    bench_common.write_result("bench_checkpoint", "cpu", head=head, rows=rows, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick, raw=raw,
                              notes="2-core CPU shared with other work; the emulator is in memory on loopback, so "
                                    "gs:// times show the object protocol's cost, not a real network's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
