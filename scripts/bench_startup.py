"""Start-up with jax's persistent compilation cache (``ankh_jax.storage.home``): a second run against the first.

    python scripts/bench_startup.py [--steps=2] [--tag=...]

Runs ``python -m ankh_jax.train --gin_file=configs/pretrain_tiny_cpu.gin`` for ``--steps`` steps three times, each a
fresh process on 8 fake CPU devices with its own MODEL_DIR: with the cache off, then twice with one fresh cache
folder (the first run fills it, the second loads from it). Reported: each run's wall time and the time to its
first step (the trainer's first metrics row minus the process start: imports, data, state, compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import REPO, format_table, make_parser, write_result


def run_once(model_dir: str, cache: str, steps: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", ANKH_JAX_COMPILATION_CACHE=cache,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [sys.executable, "-m", "ankh_jax.train", "--gin_file=configs/pretrain_tiny_cpu.gin",
           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", "--gin.WARMUP_STEPS=1",
           "--gin.LoopConfig.log_every_steps=1", "--gin.LoopConfig.progress_bar=False",
           "--gin.LoopConfig.draw_plots=False", "--gin.EvalConfig.every_steps=0"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench_startup: the trainer exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    first_row = os.path.getmtime(os.path.join(model_dir, "metrics.jsonl"))  # upper bound if several rows
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {"wall_s": round(wall, 1), "rows": len(rows), "last_row_s": round(first_row - started, 1)}


def main() -> None:
    parser = make_parser(__doc__, quick_help="the same (it is short)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "xla_cache")
        for label, cache_dir in (("cache off", ""), ("first run, empty cache", cache),
                                 ("second run, cache filled", cache)):
            r = run_once(os.path.join(tmp, f"run{len(results)}"), cache_dir, args.steps)
            r["run"] = label
            results.append(r)
            print(f"{label}: {r['wall_s']} s", flush=True)
    head = ["run", "wall s", f"until the metrics row of step {args.steps} (s)"]
    rows = [[r["run"], r["wall_s"], r["last_row_s"]] for r in results]
    print(format_table(head, rows))
    write_result("bench_startup", "cpu", head=head, rows=rows, settings=vars(args), quick=args.quick,
                 out_dir=args.out_dir)


if __name__ == "__main__":
    main()
