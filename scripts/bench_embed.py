"""Embedding throughput: ankh_jax vs HF transformers' PyTorch T5EncoderModel, same random weights, real proteins.

    python scripts/bench_embed.py                        # CPU, Ankh Base width, 4 encoder layers, 160 proteins
    python scripts/bench_embed.py --num_layers=48 --num_sequences=0          # the full Ankh Base encoder, all
    python scripts/bench_embed.py --device=gpu --dtype=bfloat16 --num_layers=48 --num_sequences=0
    python scripts/bench_embed.py --fake_devices=4     # ankh_jax on 4 fake CPU devices (overhead, not speed-up)
    python scripts/bench_embed.py --num_sequences=343 --whole_process --baseline=REF   # whole processes, before/after

One random-weight encoder of Ankh Base width (d_model 768, 12 heads x 64, d_ff 3072; depth from --num_layers) is
written as a HF directory; each framework then runs in its own subprocess (so peak RSS is its own) over the
shipped proteins (data/sample_proteins.fasta, a seeded random subset unless --num_sequences=0):

  * ankh_jax: ``ankh_jax.inference.embedding.embed_sequences`` (length-sorted, token-budget batches, padded to a few length
    buckets, scanned encoder); one program per bucket shape is compiled first (timed apart), then the run;
  * torch "README": ``T5EncoderModel`` used as in the Ankh README: batches of --torch_batch_size sequences in file
    order, padded to the longest, fp32, ``torch.no_grad()`` (plus an attention mask, which the README omits and
    without which padding changes the embeddings);
  * torch "sorted": the same, batches sorted by length (to separate framework speed from batching).

``--fake_devices=N`` runs the ankh_jax side on N fake CPU devices (XLA's host device count), the batch sharded
over them: on one CPU they share the same cores, so this measures correctness and the overhead of sharding, not a
speed-up. ``--whole_process`` times whole processes instead, as a user meets them: ``python -m ankh_jax.embed``
(imports, model load, compiling with no persistent cache, embedding, the HDF5 written) against the torch README
way (imports, load, batches of --torch_batch_size in file order, no warm-up); ``--baseline=REF`` adds the embed
command of an earlier commit (``git archive REF``, put first on PYTHONPATH), so before and after are measured in
one run, in the order after, before, torch, torch, before, after (drift falls on all three; ``--rounds=1``: the
first three only).

Prints residues/s (real residues, </s> and padding not counted), the ratios, peak memory and the largest
difference between the per-residue embeddings of the two frameworks; writes the table and the raw numbers through
``bench_common`` to benchmarks/results/bench_embed-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

REPO = bench_common.REPO


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="2 layers, 8 proteins, torch README mode only")
    p.add_argument("--num_layers", type=int, default=4, help="encoder depth (Ankh Base: 48)")
    p.add_argument("--num_sequences", type=int, default=160, help="random subset of the proteins; 0 = all")
    p.add_argument("--fasta", default=os.path.join(REPO, "data", "sample_proteins.fasta"))
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch_tokens", type=int, default=None, help="ankh_jax token budget per batch")
    p.add_argument("--torch_batch_size", type=int, default=8, help="sequences per torch batch (README style)")
    p.add_argument("--torch_modes", default="readme,sorted", help="comma list of readme, sorted (or empty)")
    p.add_argument("--tf32", action="store_true", help="GPU: allow TF32 matmuls in both (default: full fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fake_devices", type=int, default=None,
                   help="CPU: run ankh_jax on N fake devices, the batch sharded over them (overhead, not speed-up)")
    p.add_argument("--whole_process", action="store_true",
                   help="time whole processes: python -m ankh_jax.embed vs the torch README way")
    p.add_argument("--baseline", default=None, help="with --whole_process: also the embed command of this git ref")
    p.add_argument("--rounds", type=int, choices=(1, 2), default=2,
                   help="with --whole_process: 1 = after, before, torch; 2 = then torch, before, after")
    p.add_argument("--notes", default="", help="anything about the machine's state worth keeping in the record")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.num_layers, args.num_sequences, args.torch_modes = 2, 8, "readme"
    return args


def load_sequences(args) -> list[str]:
    from ankh_jax.data.fasta import load_fasta

    records = load_fasta(args.fasta)
    if args.num_sequences and args.num_sequences < len(records):
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(records))[: args.num_sequences])
        records = [records[i] for i in keep]
    return [r.sequence for r in records]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def save_embeddings(path: str, embeddings: list[np.ndarray]) -> None:
    np.savez(path, **{f"s{i}": e for i, e in enumerate(embeddings)})


# ----------------------------------------------------------------------------------------------------------------
# Workers (each in its own process)
# ----------------------------------------------------------------------------------------------------------------

def jax_worker(args, workdir: str) -> dict:
    import jax

    if args.device == "gpu" and not args.tf32:
        jax.config.update("jax_default_matmul_precision", "highest")
    from ankh_jax.data import batching
    from ankh_jax.inference import embedding as embed
    from ankh_jax.io import hf_files

    config, params = hf_files.load_hf_model(workdir + "/model", encoder_only=True)
    seqs = load_sequences(args)
    kwargs = {} if args.batch_tokens is None else {"batch_tokens": args.batch_tokens}
    prepared = embed.prepare_params(config, params)
    lengths = [len(s) + 1 for s in seqs]
    t0 = time.perf_counter()
    shapes = embed.precompile(config, prepared, lengths, dtype=args.dtype, **kwargs)
    compile_seconds = time.perf_counter() - t0
    print(f"ankh_jax: compiled {shapes} batch shapes in {compile_seconds:.1f}s", file=sys.stderr, flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = embed.embed_sequences(config, prepared, seqs, dtype=args.dtype, progress=sys.stderr.isatty(), **kwargs)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    save_embeddings(workdir + "/jax.npz", out)
    plan = batching.plan_batches(lengths, row_multiple=prepared.parallel.size, **kwargs)
    rows = batching.batch_rows(plan, prepared.parallel.size)
    result = {"compile_seconds": compile_seconds, "seconds": seconds, "cpu_seconds": cpu, "compiled_shapes": shapes,
              "padded_tokens": int(sum(rows[w] * w for w, _ in plan)), "device": str(jax.devices()[0]),
              "devices": prepared.parallel.size,
              "peak_rss_gib": peak_rss_gib()}
    if args.device == "gpu":
        stats = jax.devices()[0].memory_stats() or {}
        result["peak_device_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
    return result


def torch_worker(args, workdir: str, mode: str) -> dict:
    import torch
    import transformers

    from ankh_jax.data.tokenizer import AnkhTokenizer

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    if args.device == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    model = transformers.T5EncoderModel.from_pretrained(workdir + "/model", dtype=dtype).to(device).eval()
    seqs = load_sequences(args)
    order = list(range(len(seqs)))
    if mode == "sorted":
        order.sort(key=lambda i: -len(seqs[i]))
    batches = [order[i: i + args.torch_batch_size] for i in range(0, len(order), args.torch_batch_size)]
    tok = AnkhTokenizer()

    def run(batch):
        ids, mask = tok.batch_encode([seqs[i] for i in batch])
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor(ids, dtype=torch.long, device=device),
                           attention_mask=torch.tensor(mask, device=device)).last_hidden_state
        return hidden.float().cpu().numpy()

    if not args.whole_process:
        run(batches[0])  # warm-up (allocator, kernels)
    if args.device == "gpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out: list[np.ndarray | None] = [None] * len(seqs)
    padded = 0
    t0, c0 = time.perf_counter(), cpu_seconds()
    for n, batch in enumerate(batches):
        hidden = run(batch)
        padded += hidden.shape[0] * hidden.shape[1]
        for r, i in enumerate(batch):
            out[i] = hidden[r, : len(seqs[i])]
        if n % 20 == 0:
            done = sum(len(seqs[i]) for b in batches[: n + 1] for i in b)
            print(f"torch {mode}: batch {n + 1}/{len(batches)}, {done / (time.perf_counter() - t0):.0f} res/s",
                  file=sys.stderr, flush=True)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if mode == "readme":
        save_embeddings(workdir + "/torch.npz", out)
    result = {"seconds": seconds, "cpu_seconds": cpu, "padded_tokens": int(padded), "device": str(device),
              "threads": torch.get_num_threads(), "peak_rss_gib": peak_rss_gib()}
    if args.device == "gpu":
        result["peak_device_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------

def build_model(args, workdir: str) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from ankh_jax.io import hf_export
    from ankh_jax.model import EncoderOnly, T5Config

    config = T5Config.ankh_base(num_encoder_layers=args.num_layers, num_decoder_layers=1, dropout_rate=0.0)
    params = nn.unbox(EncoderOnly(config).init(jax.random.PRNGKey(args.seed), jnp.ones((1, 8), jnp.int32)))
    hf_export.export(config, params["params"], workdir + "/model", encoder_only=True, source="random init")
    return {"d_model": config.d_model, "num_heads": config.num_heads, "d_ff": config.d_ff,
            "num_layers": config.num_encoder_layers, "encoder_params": config.num_params(encoder_only=True)}


def spawn(args, workdir: str, worker: str) -> dict:
    env = dict(os.environ)
    if args.device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("JAX_PLATFORMS", None)  # the driver itself runs jax on the CPU only
    env.pop("XLA_FLAGS", None)  # no fake devices: one CPU device using every core
    if worker == "jax" and args.fake_devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
    cmd = [sys.executable, os.path.abspath(__file__), f"--_worker={worker}", f"--_workdir={workdir}"]
    cmd += [a for a in sys.argv[1:] if not a.startswith("--_")]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    whole = time.perf_counter() - t0
    with open(os.path.join(workdir, f"{worker}.json")) as f:
        return {**json.load(f), "whole_process_seconds": whole}


def embed_process(args, workdir: str, code: str, fasta: str) -> float:
    """Seconds of one whole ``python -m ankh_jax.embed`` process running the ankh_jax found in ``code``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", PYTHONPATH=code)
    out = os.path.join(workdir, "whole.h5")
    if os.path.exists(out):
        os.remove(out)
    argv = [f"--model={workdir}/model", f"--fasta={fasta}", f"--output={out}", "--no_progress",
            "--compilation_cache_dir=", f"--dtype={args.dtype}"]
    if args.batch_tokens:
        argv.append(f"--batch_tokens={args.batch_tokens}")
    script = (f"import sys, ankh_jax; assert ankh_jax.__file__.startswith({code!r}), ankh_jax.__file__; "
              f"from ankh_jax.embed import main; sys.exit(main({argv!r}))")
    t0 = time.perf_counter()
    # cwd: a folder without an ankh_jax package (``-c`` puts the cwd first on sys.path, before PYTHONPATH)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, stdout=subprocess.DEVNULL, cwd=workdir)
    return time.perf_counter() - t0


def whole_processes(args, workdir: str, seqs: list[str], meta: dict) -> dict:
    """After, before, torch (then torch, before, after with ``--rounds=2``): whole-process seconds of each (see
    the module docstring); the record is rewritten after every process, so a run cut short keeps what it measured
    (``complete: false``)."""
    from ankh_jax.data.fasta import write_fasta

    fasta = os.path.join(workdir, "subset.fasta")
    write_fasta(fasta, [(f"s{i}", s) for i, s in enumerate(seqs)])
    codes = {"after": REPO}
    if args.baseline:
        codes["before"] = os.path.join(workdir, "baseline")
        os.makedirs(codes["before"])
        archive = subprocess.run(["git", "-C", REPO, "archive", args.baseline, "ankh_jax"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", codes["before"]], input=archive, check=True)
    order = list(codes) + ["torch"]
    runs = (order + order[::-1])[: len(order) * args.rounds]
    times: dict[str, list[float]] = {name: [] for name in order}
    for k, name in enumerate(runs):
        if name == "torch":
            times[name].append(spawn(args, workdir, "torch_readme")["whole_process_seconds"])
        else:
            times[name].append(embed_process(args, workdir, codes[name], fasta))
        print(f"whole process {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
        mean = {n: float(np.mean(t)) for n, t in times.items() if t}
        whole = {"seconds": times, "mean_seconds": mean, "baseline": args.baseline, "order": runs,
                 "complete": k == len(runs) - 1,
                 "ratio_vs_torch_readme": {n: mean["torch"] / mean[n] for n in codes if n in mean and "torch" in mean}}
        report_whole_processes(args, meta, whole)
    return whole


def compare(workdir: str, n: int) -> dict:
    a, b = np.load(workdir + "/jax.npz"), np.load(workdir + "/torch.npz")
    max_abs, max_ref = 0.0, 0.0
    for i in range(n):
        x, y = a[f"s{i}"], b[f"s{i}"]
        if x.shape != y.shape:
            raise AssertionError(f"sequence {i}: shapes {x.shape} vs {y.shape}")
        max_abs = max(max_abs, float(np.abs(x - y).max()))
        max_ref = max(max_ref, float(np.abs(y).max()))
    return {"max_abs_diff": max_abs, "max_abs_embedding": max_ref, "relative": max_abs / max(max_ref, 1e-30)}


def print_table(meta: dict, results: dict, diff: dict | None) -> None:
    residues = meta["residues"]
    jax_res = results["jax"]
    rows = [("ankh_jax (compiled)", jax_res["seconds"], jax_res["cpu_seconds"], jax_res),
            ("ankh_jax (including compile)", jax_res["seconds"] + jax_res["compile_seconds"], None, jax_res)]
    for mode in ("readme", "sorted"):
        if f"torch_{mode}" in results:
            label = f"torch T5EncoderModel ({'README: file order' if mode == 'readme' else 'length-sorted'}, " \
                    f"bs {meta['torch_batch_size']})"
            res = results[f"torch_{mode}"]
            rows.append((label, res["seconds"], res["cpu_seconds"], res))
    base = results.get("torch_readme", {}).get("seconds")
    mem_key = "peak_device_gib" if meta["device"] == "gpu" else "peak_rss_gib"
    print(f"\n{meta['num_sequences']} proteins, {residues} residues; encoder d_model {meta['d_model']}, "
          f"{meta['num_layers']} layers ({meta['encoder_params'] / 1e6:.1f}M params), {meta['dtype']}, "
          f"{meta['device']} ({results['jax']['device']}); load average {os.getloadavg()[0]:.1f} at the end")
    print(f"| {'run':<50} | {'residues/s':>10} | {'res/CPU-s':>9} | {'seconds':>8} | {'padded/real':>11} | "
          f"{'x torch README':>14} | {'peak ' + ('GPU' if meta['device'] == 'gpu' else 'RSS') + ' GiB':>13} |")
    print("|" + "|".join("-" * (n + 2) for n in (50, 10, 9, 8, 11, 14, 13)) + "|")
    for label, secs, cpu, res in rows:
        ratio = f"{base / secs:.2f}" if base else "-"
        per_cpu = f"{residues / cpu:.1f}" if cpu else "-"
        print(f"| {label:<50} | {residues / secs:>10.1f} | {per_cpu:>9} | {secs:>8.1f} | "
              f"{res['padded_tokens'] / residues:>11.2f} | {ratio:>14} | {res.get(mem_key, 0):>13.2f} |")
    print("residues/s: real residues (no </s>, no padding) per wall-clock second; res/CPU-s: per second of this "
          "process's CPU time (less sensitive to other load on the machine)")
    if diff:
        print(f"max |ankh_jax - torch| over all per-residue embeddings: {diff['max_abs_diff']:.2e} "
              f"({diff['relative']:.2e} of max |embedding| {diff['max_abs_embedding']:.2f})")
    print(f"ankh_jax compiled {jax_res['compiled_shapes']} batch shapes in {jax_res['compile_seconds']:.1f}s "
          "(once per FASTA; the embed CLI caches compiled programs on disk for later runs)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        if args._worker == "jax":
            result = jax_worker(args, args._workdir)
        else:
            result = torch_worker(args, args._workdir, args._worker.split("_", 1)[1])
        with open(os.path.join(args._workdir, f"{args._worker}.json"), "w") as f:
            json.dump(result, f)
        return 0
    modes = [m for m in args.torch_modes.split(",") if m]
    for m in modes:
        if m not in ("readme", "sorted"):
            raise SystemExit(f"--torch_modes: unknown mode {m!r}")
    os.environ["JAX_PLATFORMS"] = "cpu"  # building the random model here must not claim the GPU's memory
    seqs = load_sequences(args)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as workdir:
        meta = build_model(args, workdir)
        meta.update(num_sequences=len(seqs), residues=int(sum(map(len, seqs))), device=args.device,
                    dtype=args.dtype, torch_batch_size=args.torch_batch_size)
        if args.whole_process:
            whole_processes(args, workdir, seqs, meta)
            return 0
        results = {"jax": spawn(args, workdir, "jax")}
        for m in modes:
            results[f"torch_{m}"] = spawn(args, workdir, f"torch_{m}")
        diff = compare(workdir, len(seqs)) if "torch_readme" in results else None
    print_table(meta, results, diff)
    for res in results.values():
        res["residues_per_second"] = meta["residues"] / res["seconds"]
    head = ["run", "residues/s", "seconds", "padded/real tokens", "peak memory GiB"]
    mem_key = "peak_device_gib" if args.device == "gpu" else "peak_rss_gib"
    rows = [[name, round(res["residues_per_second"], 1), round(res["seconds"], 2),
             round(res["padded_tokens"] / meta["residues"], 2), round(res.get(mem_key, 0), 2)]
            for name, res in results.items()]
    bench_common.write_result("bench_embed", args.device, head=head, rows=rows, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick, model=meta, raw=results, difference=diff,
                              notes=args.notes)
    return 0


def report_whole_processes(args, meta: dict, whole: dict) -> int:
    head = ["process", "seconds (each run)", "mean seconds", "x torch README (whole process)"]
    rows = [[name, " ".join(f"{t:.1f}" for t in times), round(whole["mean_seconds"][name], 2),
             round(whole["ratio_vs_torch_readme"][name], 3) if name in whole["ratio_vs_torch_readme"] else "-"]
            for name, times in whole["seconds"].items() if times]
    print(f"\n{meta['num_sequences']} proteins, {meta['residues']} residues, {meta['num_layers']} layers, "
          f"{meta['dtype']}; load average {os.getloadavg()[0]:.1f} at the end")
    print(bench_common.format_table(head, rows))
    bench_common.write_result("bench_embed", args.device, head=head, rows=rows, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick, model=meta, whole_process=whole,
                              notes=args.notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
