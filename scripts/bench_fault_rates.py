"""What transient object-storage faults cost: the trainer's gs:// writes through a proxy that fails a share of
requests with HTTP 503 and drops another share unanswered (``ankh_jax.storage.emulator.FaultProxy``).

    python scripts/bench_fault_rates.py [--rates=0,0.05,0.2,0.4] [--quick]

At each fault rate (half 503s, half drops) it writes and reads back metrics rows (``JsonlWriter``, one upload
per row), takes and releases the run lock, and saves and restores an orbax checkpoint of the tiny model's train
state (``Checkpointer``), and records whether everything came back intact, the seconds it took, and how many
requests the proxy failed. Prints a table, writes benchmarks/results/bench_fault_rates-cpu-<date>.json.
"""

from __future__ import annotations

import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

bench_common.fake_cpu_devices(8)
from bench_checkpoint import train_state


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.retries = 0

    def emit(self, record):
        if "retrying" in record.getMessage():
            self.retries += 1


def one_rate(rate: float, state, rows: int) -> dict:
    import jax
    import numpy as np

    from ankh_jax.io.checkpoints import Checkpointer
    from ankh_jax.storage.emulator import FaultProxy, GcsEmulator, free_port
    from ankh_jax.storage.jsonl import JsonlWriter, read_jsonl
    from ankh_jax.storage.lock import DirectoryLock

    port = free_port()
    counter = _Count()
    logging.getLogger("ankh_jax.storage.paths").addHandler(counter)
    started = time.perf_counter()
    outcome = "intact"
    with GcsEmulator(external_url=f"http://127.0.0.1:{port}") as gcs, \
            FaultProxy(gcs.url, error_rate=rate / 2, drop_rate=rate / 2, seed=0, port=port) as proxy:
        run = gcs.create_bucket("faults") + "/run"
        try:
            with DirectoryLock(run, "bench"):
                writer = JsonlWriter(f"{run}/metrics.jsonl")
                for step in range(rows):
                    writer.append({"step": step})
                assert [r["step"] for r in read_jsonl(f"{run}/metrics.jsonl")[0]] == list(range(rows))
                checkpointer = Checkpointer(run, save_interval_steps=1, async_save=False)
                checkpointer.save(1, state.params, state.opt_state, [{"position": 1}])
                restored = checkpointer.restore_latest(
                    jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                           state.params),
                    jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                           state.opt_state))
                checkpointer.close()
                same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                           zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(restored.params)))
                outcome = "intact" if same else "params differ"
        except Exception as err:  # noqa: BLE001 - the outcome at this rate is what is measured
            outcome = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        counts = dict(proxy.counts)
    logging.getLogger("ankh_jax.storage.paths").removeHandler(counter)
    return {"rate": rate, "outcome": outcome, "seconds": round(time.perf_counter() - started, 2),
            "requests": sum(counts.values()), "failed_503": counts["errors_503"], "dropped": counts["dropped"],
            "gcsfs_retries_logged": counter.retries}


def main(argv=None) -> int:
    p = bench_common.make_parser(__doc__, quick_help="rates 0 and 0.05, 5 rows")
    p.add_argument("--rates", default="0,0.05,0.2,0.4", help="comma-separated shares of requests that fail")
    p.add_argument("--rows", type=int, default=20, help="metrics rows written per rate")
    args = p.parse_args(argv)
    from ankh_jax.model.config import T5Config

    rates = [0.0, 0.05] if args.quick else [float(r) for r in args.rates.split(",")]
    state = train_state(T5Config.tiny())
    head = ["fault rate", "outcome", "seconds", "requests", "503s", "dropped", "retries logged"]
    table = []
    for rate in rates:
        r = one_rate(rate, state, 5 if args.quick else args.rows)
        table.append([r["rate"], r["outcome"], r["seconds"], r["requests"], r["failed_503"], r["dropped"],
                      r["gcsfs_retries_logged"]])
        print(bench_common.format_table(head, table[-1:]), flush=True)
    print(bench_common.format_table(head, table))
    bench_common.write_result("bench_fault_rates", "cpu", head=head, rows=table, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick,
                              notes="fake-gcs-server in memory behind FaultProxy on loopback; half the faults are "
                                    "503 answers, half dropped connections; 2-core CPU shared with other work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
