"""Benchmark of the frozen protocol on this machine: embed the shipped proteins, then train a ConvBERT head.

    .venv/bin/python scripts/bench_finetune.py [--preset tiny|base] [--layers N] [--epochs 5] [--one_by_one 64] [--quick]

Steps, each timed:
1. embed all 1,446 shipped proteins (data/pfam_family_*.csv) with token-budget batching (``ankh_jax.inference.embedding``);
2. embed the first ``--one_by_one`` of them one sequence at a time, as the Ankh notebooks do, and extrapolate;
3. train the Pfam-family head for ``--epochs`` epochs on the cached embeddings through the runner.
The encoder has random weights (Ankh shapes; ``--preset base --layers 4`` = Ankh Base width at reduced depth): the
timings, not the accuracy, are the point. Prints a table and writes it through ``bench_common`` to
benchmarks/results/bench_finetune-<device>-<date>.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path
from ankh_jax.tasks.pfam_family import pfam_family_task

from ankh_jax import flags
from ankh_jax.downstream import runner
from ankh_jax.downstream.task_spec import load_task
from ankh_jax.finetune import GIN_MODULES
from ankh_jax.inference.embedding import embed_sequences
from ankh_jax.testing import random_encoder, write_random_encoder


def main(argv=None) -> int:
    p = bench_common.make_parser(__doc__, quick_help="tiny encoder, 1 epoch, 4 proteins one by one, 128 residues")
    p.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    p.add_argument("--layers", type=int, default=None, help="encoder depth (default: the preset's)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max_length", type=int, default=512, help="residues kept per protein")
    p.add_argument("--one_by_one", type=int, default=64, help="proteins embedded one at a time (0: skip)")
    p.add_argument("--batch_tokens", type=int, default=16384)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.layers, args.epochs, args.one_by_one, args.max_length = "tiny", None, 1, 4, 128

    enc = random_encoder(args.preset, 0, args.layers)
    data = load_task(pfam_family_task(max_length=args.max_length))
    sequences = [s for split in data.splits.values() for s in split.sequences]
    residues = sum(len(s) for s in sequences)
    rows = []

    embed_sequences(enc.config, enc.params, sequences[:8], batch_tokens=args.batch_tokens)  # warm the cache
    t0 = time.perf_counter()
    embed_sequences(enc.config, enc.params, sequences, batch_tokens=args.batch_tokens, progress=True)
    batched = time.perf_counter() - t0
    rows.append(("embed, token-budget batches", len(sequences), residues, batched))

    if args.one_by_one:
        subset = sequences[:args.one_by_one]
        t0 = time.perf_counter()
        for s in subset:
            embed_sequences(enc.config, enc.params, [s], batch_tokens=args.batch_tokens)
        alone = time.perf_counter() - t0
        sub_res = sum(len(s) for s in subset)
        rows.append(("embed, one at a time (notebook way)", len(subset), sub_res, alone))
        rows.append(("  -> extrapolated to all proteins", len(sequences), residues, alone * residues / sub_res))

    with tempfile.TemporaryDirectory() as work:  # the runner reads the same random encoder from a directory
        model_dir = os.path.join(work, "run")
        encoder_dir = write_random_encoder(os.path.join(work, "encoder"), args.preset, 0, args.layers)
        flags.parse_gin(["downstream/pfam_family.gin"], [
            f"MODEL_DIR = '{model_dir}'", f"ENCODER = '{encoder_dir}'", "run.progress = True",
            f"pfam_family_task.max_length = {args.max_length}", f"StoppingConfig.max_epochs = {args.epochs}",
            f"StoppingConfig.patience = {args.epochs}", f"EmbeddingCacheConfig.batch_tokens = {args.batch_tokens}"],
            modules=GIN_MODULES)
        results = runner.run()
    rows.append(("head training (frozen), incl. compile", len(data.splits["train"].sequences),
                 sum(len(s) for s in data.splits["train"].sequences) * results["epochs_run"],
                 results["train_seconds"]))
    rows.append(("whole run: load + embed + train + test", len(sequences), residues, results["seconds_total"]))

    print(f"\nFrozen protocol on this CPU: random {args.preset} encoder (d_model {enc.d_model}, "
          f"{enc.config.num_encoder_layers} layers), {args.epochs} epochs; test accuracy "
          f"{results['tests']['pfam_family']['accuracy']:.3f} (random weights)")
    print(f"| {'step':40s} | proteins | residues | seconds | residues/s |")
    print(f"|{'-' * 42}|---------:|---------:|--------:|-----------:|")
    for name, n, res, sec in rows:
        print(f"| {name:40s} | {n:8d} | {res:8d} | {sec:7.1f} | {res / max(sec, 1e-9):10.0f} |")
    head = ["step", "proteins", "residues", "seconds", "residues/s"]
    table = [[a, b, c, round(d, 2), round(c / max(d, 1e-9))] for a, b, c, d in rows]
    import jax

    bench_common.write_result("bench_finetune", jax.devices()[0].platform, head=head, rows=table, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick, preset=args.preset,
                              layers=enc.config.num_encoder_layers,
                              test_accuracy=results["tests"]["pfam_family"]["accuracy"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
