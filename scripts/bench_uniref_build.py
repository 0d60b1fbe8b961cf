"""Build speed and peak memory of the pretraining dataset build: one process vs Apache Beam's DirectRunner.

    python scripts/bench_uniref_build.py [--records=1000000] [--files=8] [--workers=2] [--quick]

Writes a synthetic UniRef-like FASTA (``--records`` records over ``--files`` files; lengths log-normal with
UniRef50's mean of ~310 residues, 20 amino acids, a seeded generator), then times the real command twice on it,
each in its own process:

* ``scripts/prepare_uniref50.py`` in one process (the default build: one read of the input, tfds's writer);
* the same with ``--beam_runner=DirectRunner --direct_num_workers=<workers> --direct_running_mode=multi_processing``.

Records/s is records in the FASTA over the command's wall time (start to the dataset written, Python start-up and
imports included); peak RSS is the largest summed resident memory of the command's process tree (sampled from
/proc every 0.2 s, so Beam's worker processes count), plus the largest single process. Both builds must give the
same (split, record count) or the run fails. Prints a table and writes it through ``bench_common`` to
benchmarks/results/bench_uniref_build-cpu<cores>-<date>.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

from ankh_jax.parsing import try_int

REPO = bench_common.REPO

RESIDUES = np.frombuffer(b"ALGVSREDTIPKFQNYMHWC", np.uint8)
MEAN_LENGTH = 310  # UniRef50: ~14e9 residues / ~45e6 records


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="20,000 records, 2 shards per split")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=8, help="FASTA files the records are dealt over")
    p.add_argument("--workers", type=int, default=2, help="DirectRunner workers (multi_processing)")
    p.add_argument("--num_shards", type=int, default=16, help="TFRecord files per split")
    p.add_argument("--work_dir", default=None, help="where the FASTA and datasets go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.num_shards = 20_000, 2
    return args


def write_fasta(folder: str, records: int, files: int, seed: int = 0) -> int:
    """Writes the synthetic input; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    handles = [open(os.path.join(folder, f"uniref_synthetic-{k:03d}.fasta"), "w") for k in range(files)]  # noqa: SIM115
    try:
        for start in range(0, records, 50_000):
            n = min(50_000, records - start)
            lengths = np.clip(rng.lognormal(np.log(MEAN_LENGTH) - 0.32, 0.8, n).astype(int), 5, 35_000)
            letters = RESIDUES[rng.integers(0, len(RESIDUES), int(lengths.sum()))].tobytes().decode()
            ends = np.cumsum(lengths)
            for i in range(n):
                seq = letters[ends[i] - lengths[i]: ends[i]]
                lines = "\n".join(seq[j: j + 60] for j in range(0, len(seq), 60))
                handles[(start + i) % files].write(f">UniRef50_X{start + i:08d} n=1 Tax=synthetic\n{lines}\n")
    finally:
        for h in handles:
            h.close()
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def _tree_rss(root: int) -> tuple[int, int]:
    """(summed RSS, largest single RSS) in bytes of ``root`` and its descendants, from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[-1].split()  # the fields after the command name
            with open(f"/proc/{entry}/statm") as f:
                statm = f.read().split()
        except OSError:
            continue  # the process ended while it was read
        parent = try_int(stat[1]) if len(stat) > 1 else None
        pages = try_int(statm[1]) if len(statm) > 1 else None
        if parent is not None and pages is not None:
            parents[int(entry)], rss[int(entry)] = parent, pages * os.sysconf("SC_PAGE_SIZE")
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier.extend(children)
    sizes = [rss.get(pid, 0) for pid in tree]
    return sum(sizes), max(sizes)


def run_build(name: str, argv: list[str]) -> dict:
    """Runs the command, sampling its process tree's memory; returns its timing, peaks and stats.json."""
    peak = {"sum": 0, "single": 0}
    start = time.time()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "prepare_uniref50.py"), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            total, single = _tree_rss(proc.pid)
            peak["sum"], peak["single"] = max(peak["sum"], total), max(peak["single"], single)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.time() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name} build failed (exit {proc.returncode}):\n{output[-4000:]}")
    out_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("--output_dir="))
    with open(os.path.join(out_dir, "stats.json")) as f:
        stats = json.load(f)
    return {"seconds": seconds, "peak_rss_sum": peak["sum"], "peak_rss_single": peak["single"], "stats": stats}


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_uniref_build_")
    fasta_dir = os.path.join(work, "fasta")
    for sub in ("fasta", "one", "beam"):  # this script's own folders only
        shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    os.makedirs(fasta_dir)
    t0 = time.time()
    size = write_fasta(fasta_dir, args.records, args.files)
    print(f"synthetic input: {args.records} records in {args.files} files, {size / 2**20:.0f} MiB "
          f"({time.time() - t0:.0f} s to write)", flush=True)
    common = [f"--fasta={fasta_dir}/*.fasta", f"--num_shards={args.num_shards}", "--no_progress", "--overwrite"]
    modes = {
        "one process": [*common, f"--output_dir={work}/one"],
        f"DirectRunner, {args.workers} workers": [
            *common, f"--output_dir={work}/beam", "--beam_runner=DirectRunner",
            f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"],
    }
    results = {}
    for name, mode_argv in modes.items():
        print(f"building: {name} ...", flush=True)
        results[name] = run_build(name, mode_argv)
    counts = {name: {s: v["records"] for s, v in r["stats"]["splits"].items()} for name, r in results.items()}
    if len({json.dumps(c, sort_keys=True) for c in counts.values()}) != 1:
        raise SystemExit(f"the builds disagree: {counts}")
    head = ["build", "records", "seconds", "records/s", "peak RSS (tree) MiB", "peak RSS (one process) MiB"]
    rows = [[name, r["stats"]["records_in_fasta"], round(r["seconds"], 1),
             round(r["stats"]["records_in_fasta"] / r["seconds"]), round(r["peak_rss_sum"] / 2**20),
             round(r["peak_rss_single"] / 2**20)] for name, r in results.items()]
    print(bench_common.format_table(head, rows))
    bench_common.write_result(
        "bench_uniref_build", f"cpu{os.cpu_count()}", head=head, rows=rows, settings=vars(args), quick=args.quick,
        input_bytes=size, split_records=counts[next(iter(counts))],
        command_seconds={n: r["stats"]["seconds"] for n, r in results.items()})
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
