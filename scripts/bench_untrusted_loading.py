"""How fast, and in how much memory, ``score`` refuses a poisoned model directory (issue 24's "Done means").

    python scripts/bench_untrusted_loading.py [--quick] [--tag=T]

Builds a tiny random Ankh-shaped model, exported as HF safetensors shards, then one poisoned copy per case: an
index naming ``../outside/evil.safetensors``, an index naming ``/dev/zero``, ``config.json`` with
``num_layers: 10000000`` (before: 89 s and 9.6 GB, then a MemoryError), ``num_layers: 1000`` (under the cap:
refused by comparing with the layers the weights hold), and ``config.json`` linked to ``/dev/zero`` (before: 8.7
GB read in 18 s). Each case runs ``python -m ankh_jax.score --model=DIR --fasta=F --output=O`` as a fresh process
and records its wall time, peak resident memory (``ru_maxrss`` of that process, read by a fresh parent), exit
status and stderr line count. Nothing is asserted: the table is printed and written to ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

REPO = bench_common.REPO


def _poison(case: str, model: str, work: str) -> None:
    index_path = os.path.join(model, "model.safetensors.index.json")
    config_path = os.path.join(model, "config.json")
    if case.startswith("index"):
        with open(index_path) as f:
            index = json.load(f)
        shard = min(index["weight_map"].values())
        if case == "index names ../outside":
            os.makedirs(os.path.join(work, "outside"), exist_ok=True)
            shutil.copy(os.path.join(model, shard), os.path.join(work, "outside", "evil.safetensors"))
            target = "../outside/evil.safetensors"
        else:
            target = "/dev/zero"
        index["weight_map"] = {k: target if v == shard else v for k, v in index["weight_map"].items()}
        with open(index_path, "w") as f:
            json.dump(index, f)
    elif case.startswith("num_layers"):
        with open(config_path) as f:
            config = json.load(f)
        config["num_layers"] = int(case.split("=")[1])
        with open(config_path, "w") as f:
            json.dump(config, f)
    elif case == "config.json -> /dev/zero":
        os.remove(config_path)
        os.symlink("/dev/zero", config_path)


CASES = ("index names ../outside", "index names /dev/zero", "num_layers=10000000", "num_layers=1000",
         "config.json -> /dev/zero")


_MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"seconds": time.perf_counter() - t, "rc": proc.returncode, "stderr": proc.stderr,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _run(model: str, fasta: str, out: str) -> dict:
    """One ``score`` process, measured by a fresh parent of its own (so ``RUSAGE_CHILDREN`` is that one process)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # as a user runs it (startup.py decides)
    command = [sys.executable, "-m", "ankh_jax.score", f"--model={model}", f"--fasta={fasta}", f"--output={out}"]
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True, timeout=900)
    return json.loads(done.stdout)


def main() -> None:
    p = bench_common.make_parser(__doc__, quick_help="the same cases (they are all small); the record goes to quick/")
    args = p.parse_args()
    from ankh_jax.io import hf_export
    from ankh_jax.testing import DECODING_CFG, decoding_params

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as work:
        clean = os.path.join(work, "clean")
        hf_export.export(DECODING_CFG, decoding_params(0), clean, max_shard_bytes=20_000)
        fasta = os.path.join(work, "in.fasta")
        with open(fasta, "w") as f:
            f.write(">p\nMKTAYIAKQR\n")
        for case in ("clean (reference)", *CASES):
            model = os.path.join(work, case.replace(" ", "_").replace("/", "_"))
            shutil.copytree(clean, model)
            _poison(case, model, work)
            result = _run(model, fasta, os.path.join(work, "out.csv"))
            stderr = result["stderr"].replace(work, "<work>").strip().splitlines()  # no machine paths recorded
            peak = result["peak_rss_kib"] / 1024
            rows.append([case, result["rc"], f"{result['seconds']:.1f}", f"{peak:.0f}", len(stderr),
                         (stderr[0].split(": error: ")[-1] if stderr else "")[:90]])
            raw.append({"case": case, "exit": result["rc"], "seconds": round(result["seconds"], 2),
                        "peak_rss_mib": round(peak), "stderr": stderr})
    head = ["case", "exit", "wall s", "peak RSS MiB", "stderr lines", "message"]
    print(bench_common.format_table(head, rows))
    bench_common.write_result("bench_untrusted_loading", "cpu", head=head, rows=rows,
                              settings={"quick": args.quick, "tag": args.tag}, out_dir=args.out_dir,
                              quick=args.quick, raw=raw)


if __name__ == "__main__":
    main()
