"""Long proteins: time and peak memory of one protein through Ankh Base's encoder, against its length.

    python scripts/bench_long_proteins.py                            # CPU, 48 layers, L = 1k 2k 5k 10k 35k
    python scripts/bench_long_proteins.py --attention=plain --lengths=1000,2000,5000   # the L x L path, to compare
    python scripts/bench_long_proteins.py --device=gpu --dtype=bfloat16

Each length runs in a fresh subprocess (so its peak RSS is its own, read with ``os.wait4``): one random protein
of L residues (L - 1 random amino acids plus ``</s>``, batch 1) through an encoder of Ankh Base width (d_model
768, 12 heads x 64, d_ff 3072, --num_layers layers, random weights, layers scanned) built from
``ankh_jax.inference.embedding.embed_sequences`` (mean pooling), the library under ``python -m ankh_jax.embed``,
with its automatic attention choice (``--attention=auto``: chunks of 1024 above 2048 tokens; ``model/attention.py``:
keys and queries in chunks, online softmax, O(L) memory), chunks of ``--chunk_size`` at every length
(``chunked``), or the materialised ``heads x L x L`` path (``plain``). The program is compiled first
(``embedding.precompile``, timed apart), then run --repeats times (the best time is reported). A child that dies (out of memory) or passes --timeout_s is a row saying so, not a crash of the script.

Prints a table (seconds, residues/s, peak RSS, and the exponent k of time ~ L^k and memory ~ L^k between
consecutive lengths) and writes it through ``bench_common`` to benchmarks/results/bench_long_proteins-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="lengths 300,600 through 2 layers, chunks of 128")
    p.add_argument("--lengths", default="1000,2000,5000,10000,35000", help="comma list of residues per protein")
    p.add_argument("--num_layers", type=int, default=48, help="encoder depth (Ankh Base: 48)")
    p.add_argument("--attention", choices=("auto", "chunked", "plain"), default="auto",
                   help="auto: what python -m ankh_jax.embed picks per length; chunked: --chunk_size always; "
                        "plain: the heads x L x L path")
    p.add_argument("--chunk_size", type=int, default=1024, help="keys (and queries) per attention chunk")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per length (the best is reported)")
    p.add_argument("--timeout_s", type=float, default=3600.0, help="per length; a slower child is stopped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.num_layers, args.chunk_size = "300,600", 2, 128
        args.attention = "chunked" if args.attention == "auto" else args.attention
    return args


def model_config(args):
    from ankh_jax.model.config import T5Config

    return T5Config.ankh_base(num_encoder_layers=args.num_layers, num_decoder_layers=0, scan_layers=True,
                              dtype=args.dtype)


def chunk_setting(args) -> int | None:
    """``attention_chunk_size`` for ``embed_sequences``: None (automatic, what ``embed`` does), N, or 0 (plain)."""
    return {"auto": None, "chunked": args.chunk_size, "plain": 0}[args.attention]


def worker(args, length: int) -> dict:
    """One protein of ``length`` residues (``length + 1`` tokens with ``</s>``) through ``embed_sequences``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from ankh_jax.inference import embedding
    from ankh_jax.model.network import EncoderOnly

    cfg = model_config(args)
    start = time.perf_counter()
    params = jax.jit(lambda key: nn.unbox(EncoderOnly(cfg).init(key, jnp.ones((1, 8), jnp.int32))["params"]))(
        jax.random.PRNGKey(args.seed))
    prepared = embedding.prepare_params(cfg, jax.block_until_ready(params), num_devices=1)  # one protein, one device
    init_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    protein = "".join(rng.choice(list(bench_common.AMINO_ACIDS), size=length))
    settings = {"pooling": "mean", "dtype": args.dtype, "batch_tokens": length + 1,
                "attention_chunk_size": chunk_setting(args)}
    start = time.perf_counter()
    embedding.precompile(cfg, prepared, [length + 1], **settings)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = embedding.embed_sequences(cfg, prepared, [protein], **settings)[0]
        times.append(time.perf_counter() - start)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {"tokens": length + 1, "init_s": init_s, "compile_s": compile_s, "run_s": min(times),
            "chunk_size": embedding.chunk_size_for_width(length + 1, chunk_setting(args)),
            "finite": bool(np.isfinite(out).all()), "device": f"{device.platform}:{device.id}",
            "device_kind": device.device_kind, "device_peak_bytes": stats.get("peak_bytes_in_use")}


def spawn(args, length: int, workdir: str) -> dict:
    """Runs :func:`worker` in a fresh process; returns its result plus peak RSS, or why it failed."""
    result_path = os.path.join(workdir, f"{length}.json")
    cmd = [sys.executable, os.path.abspath(__file__), f"--_worker={length}", f"--_result={result_path}"]
    cmd += [a for a in sys.argv[1:] if not a.startswith("--_")]
    env = dict(os.environ, JAX_PLATFORMS="cpu" if args.device == "cpu" else "cuda")
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env)
    deadline = start + args.timeout_s
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    row = {"length": length, "wall_s": time.perf_counter() - start, "peak_rss_gib": usage.ru_maxrss / 2**20}
    if os.path.exists(result_path):
        with open(result_path) as f:
            return row | json.load(f) | {"status": "ok"}
    code = child.returncode
    why = "timed out" if code == -9 and row["wall_s"] >= args.timeout_s else (
        f"killed by signal {-code} (out of memory?)" if code < 0 else f"exit {code}")
    return row | {"status": why}


def exponents(rows: list[dict], key: str) -> list[float | None]:
    """k in ``value ~ L^k`` between each row and the previous successful one."""
    out, prev = [], None
    for r in rows:
        v = r.get(key)
        k = None
        if v and prev and prev[1] and r["length"] != prev[0]:
            k = round(math.log(v / prev[1]) / math.log(r["length"] / prev[0]), 2)
        out.append(k)
        if v:
            prev = (r["length"], v)
    return out


def format_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    head = ["residues", "status", "run s", "residues/s", "compile s", "peak RSS GiB", "device peak GiB",
            "time ~ L^k", "RSS ~ L^k"]
    k_time, k_rss = exponents(rows, "run_s"), exponents(rows, "peak_rss_gib")
    table = []
    for r, kt, km in zip(rows, k_time, k_rss):
        ok = r["status"] == "ok"
        dev = r.get("device_peak_bytes")
        table.append([r["length"], r["status"], round(r["run_s"], 2) if ok else "",
                      round(r["length"] / r["run_s"], 1) if ok else "", round(r["compile_s"], 1) if ok else "",
                      round(r["peak_rss_gib"], 2), round(dev / 2**30, 2) if dev else "",
                      kt if kt is not None else "", km if km is not None and ok else ""])
    return head, table


def main() -> None:
    args = parse_args()
    if args._worker is not None:
        result = worker(args, args._worker)
        with open(args._result, "w") as f:
            json.dump(result, f)
        return
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for length in lengths:
            rows.append(spawn(args, length, workdir))
            print(json.dumps(rows[-1]), flush=True)
    head, table = format_table(rows)
    print(bench_common.format_table(head, table))
    cfg = model_config(args)
    kinds = sorted({r["device_kind"] for r in rows if r.get("device_kind")})
    bench_common.write_result("bench_long_proteins", args.device, head=head, rows=table, settings=vars(args), quick=args.quick,
                 out_dir=args.out_dir, device_kind=kinds, dtype=args.dtype, attention=args.attention,
                 model={"d_model": cfg.d_model, "num_heads": cfg.num_heads, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
                        "encoder_layers": cfg.num_encoder_layers}, raw=rows)

if __name__ == "__main__":
    main()
