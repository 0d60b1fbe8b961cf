"""``python -m ankh_jax.generate``: infill masked positions of proteins to make variants (``ankh_jax/inference/infilling.py``).

    python -m ankh_jax.generate --model=PATH --fasta=IN.fasta --output=OUT.fasta
        (--mask_fraction=F | --mask=SPEC) [--num_samples=N] [--strategy=greedy|sample|beam]
        [--temperature=T] [--top_k=K] [--top_p=P] [--num_beams=B] [--seed=S]

``--mask`` takes 1-based positions and inclusive spans (``10-14,30``), the same for every protein;
``--mask_fraction`` masks that fraction of each protein's positions, drawn anew for every sample from ``--seed``.
Each masked position gets its own sentinel (Ankh's 1-gram objective), so variants keep the parent's length.
``OUT.fasta`` gets one record per (protein, sample) in input order, ``>ID_sampleN parent=ID sample=N
masked=10,11 changed=A10G``; ``--log_likelihoods`` (default ``OUT.csv``) one row per sample with the answer's
log-likelihood and its status. A malformed decoder answer (see ``infilling.py``) gives no FASTA record, a
``malformed: reason`` status and is counted in the summary. Inputs, and the two output paths (writable, distinct,
neither the input), are checked before the model is loaded. The outputs are written as a pair
(``ankh_jax.storage.outputs.write_together``): whenever ``OUT.fasta`` exists, the CSV beside it is from the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS
from ankh_jax.errors import InputError, InputNotFoundError
from ankh_jax.inference.decoding import STRATEGIES
from ankh_jax.io import shards
from ankh_jax.storage import outputs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ankh_jax.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an ankh_jax training directory or a HuggingFace directory")
    p.add_argument("--fasta", required=True, help="parent proteins")
    p.add_argument("--output", required=True, help="FASTA file of the variants")
    p.add_argument("--log_likelihoods", default=None, help="CSV of per-sample log-likelihoods (default OUT.csv)")
    p.add_argument("--mask", default=None, help="1-based positions / inclusive spans, e.g. 10-14,30")
    p.add_argument("--mask_fraction", type=float, default=None, help="fraction of positions to mask at random")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--strategy", default="sample", choices=STRATEGIES)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_records", type=int, default=None, help="use only the first N records (default all)")
    p.add_argument("--batch_tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--prefix", default=None,
                   help="the task prefix token before each sequence, required when the model's tokenizer defines "
                        "prefixes (Ankh3: [S2S] for generation); dropped from the output like </s>")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an ankh_jax directory")
    shards.add_flags(p)
    return p.parse_args(argv)


def plan_masks(args, records, indices=None) -> list[list[tuple[int, ...]]]:
    """Per record, the masked positions of each sample, drawn from (seed, the record's index in the file
    (``indices``, default 0, 1, ...), sample), so a shard draws what one run would; errors name file and record."""
    from ankh_jax.inference import infilling

    masks = []
    for i, r in zip(range(len(records)) if indices is None else indices, records):
        where = f"{args.fasta}: record {r.id!r}: "
        try:
            if args.mask is not None:
                masks.append([infilling.parse_mask_spec(args.mask, len(r.sequence))] * args.num_samples)
            else:
                masks.append([infilling.random_positions(len(r.sequence), args.mask_fraction,
                                                         np.random.default_rng([args.seed, i, s]))
                              for s in range(args.num_samples)])
        except InputError as e:
            raise InputError(where + str(e)) from None
    return masks


def run(args: argparse.Namespace) -> dict:
    from ankh_jax.api import load_model
    from ankh_jax.data.fasta import load_fasta
    from ankh_jax.inference import decoding, infilling
    from ankh_jax.inference.devices import DataParallel

    if (args.mask is None) == (args.mask_fraction is None):
        raise InputError("give exactly one of --mask (positions/spans) or --mask_fraction")
    if args.mask_fraction is not None and not 0 < args.mask_fraction <= 1:
        raise InputError(f"--mask_fraction={args.mask_fraction}; must be in (0, 1]")
    if args.max_records is not None and args.max_records < 1:
        raise InputError(f"--max_records={args.max_records}; must be at least 1")
    if args.num_samples < 1:
        raise InputError(f"--num_samples={args.num_samples}; must be at least 1")
    if args.batch_tokens < 1:
        raise InputError(f"--batch_tokens={args.batch_tokens}; must be positive")
    decoding.check_settings(strategy=args.strategy, max_new_tokens=1, num_beams=args.num_beams,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if not os.path.isfile(args.fasta):
        raise InputNotFoundError(f"{args.fasta}: no such file")
    records = load_fasta(args.fasta)[: args.max_records]
    if not records:
        raise InputError(f"{args.fasta}: no records")
    indices, records, output, split = shards.select(records, args, args.output)
    masks = plan_masks(args, records, indices)
    csv_path = (shards.shard_path(args.log_likelihoods, split[1], split[0]) if args.log_likelihoods
                else os.path.splitext(output)[0] + ".csv")
    outputs.check_destinations({"--output": output, "--log_likelihoods": csv_path}, {"--fasta": args.fasta})
    model = load_model(args.model, step=args.step)
    prefix_id = model.prefix_id(args.prefix)
    config, params = model.decoding_params(args.dtype, args.num_devices)
    samples = infilling.infill(config, params, [r.sequence for r in records], masks, strategy=args.strategy,
                               num_beams=args.num_beams, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, batch_tokens=args.batch_tokens, progress=True,
                               prefix_id=prefix_id)

    def write_fasta(f):
        for s in samples:
            if s.sequence is None:
                continue
            rid = records[s.parent].id
            f.write(f">{rid}_sample{s.sample} parent={rid} sample={s.sample} "
                    f"masked={','.join(str(p + 1) for p in s.masked)} changed={','.join(s.changed) or '-'}\n")
            f.writelines(s.sequence[i: i + 60] + "\n" for i in range(0, len(s.sequence), 60))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["id", "sample", "masked", "changed", "log_likelihood", "status"])
        for s in samples:
            w.writerow([records[s.parent].id, s.sample, " ".join(str(p + 1) for p in s.masked),
                        " ".join(s.changed), f"{s.log_likelihood:.6f}",
                        "ok" if s.error is None else f"malformed: {s.error}"])

    outputs.write_together([(csv_path, write_csv), (output, write_fasta)])  # the FASTA last: see outputs
    malformed = sum(s.error is not None for s in samples)
    return {"output": output, "proteins": len(records), "samples": len(samples), "written": len(samples) - malformed,
            "malformed": malformed, "log_likelihoods": csv_path, "devices": DataParallel.of(params).size,
            "processes": split[0], "shard_index": split[1]}


def main(argv=None) -> int:
    args = parse_args(argv)
    from ankh_jax import flags
    from ankh_jax.storage.home import enable_compilation_cache

    enable_compilation_cache()  # every command shares $ANKH_JAX_HOME/xla_cache

    try:
        summary = run(args)
    except flags.command_errors() as err:
        return flags.report("generate", err)
    print(f"wrote {summary.pop('output')}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
