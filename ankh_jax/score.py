"""``python -m ankh_jax.score``: pseudo-likelihoods of proteins, or variant-effect scores of mutants.

    python -m ankh_jax.score --model=PATH --fasta=IN.fasta --output=OUT.csv
        -> columns id, length, pseudo_likelihood (one row per protein, input order)
    python -m ankh_jax.score --model=PATH --mutations=DMS.csv --wildtype=SEQ_OR_FASTA --output=OUT.csv
        -> the input CSV plus a score column (masked marginals); Spearman against --score_column when present

Definitions in ``ankh_jax/inference/scoring.py``. Every input (residues, mutation strings, wild-type letters and positions)
is checked before the model is loaded, and so is ``--output`` (writable, not a directory, not an input); an error
is one line naming the file and record or row (exit 2). The output is written to a temporary file and renamed into
place (``ankh_jax.storage.outputs``), so it is never half-written. A Spearman that is undefined (fewer than two
mutants, constant or NaN measurements) is ``null`` with the reason in ``spearman_undefined``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS
from ankh_jax.errors import InputError, InputNotFoundError
from ankh_jax.io import shards
from ankh_jax.parsing import try_float
from ankh_jax.storage import outputs

DEFAULT_SCORE_COLUMNS = ("DMS_score", "score")  # ProteinGym's name first


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ankh_jax.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an ankh_jax training directory or a HuggingFace directory")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--fasta", help="proteins to score (pseudo-likelihood)")
    p.add_argument("--mutations", help="CSV with a mutant column (A23G, A23G:K45R; 1-based)")
    p.add_argument("--wildtype", help="the wild type: a sequence, or a FASTA file with one record")
    p.add_argument("--mutant_column", default="mutant")
    p.add_argument("--score_column", default=None,
                   help=f"experimental scores for Spearman (default: the first of {DEFAULT_SCORE_COLUMNS} present)")
    p.add_argument("--output_column", default="ankh_score", help="name of the added score column")
    p.add_argument("--max_records", type=int, default=None, help="use only the first N records (default all)")
    p.add_argument("--batch_tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--prefix", default=None,
                   help="the task prefix token before each sequence, required when the model's tokenizer defines "
                        "prefixes (Ankh3: [NLU] for likelihoods); dropped from the output like </s>")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an ankh_jax directory")
    shards.add_flags(p)
    return p.parse_args(argv)


def read_wildtype(value: str) -> str:
    from ankh_jax.data.fasta import load_fasta
    from ankh_jax.data.tokenizer import clean_sequence

    if os.path.isfile(value):
        records = load_fasta(value)
        if len(records) != 1:
            raise InputError(f"{value}: --wildtype needs a FASTA file with exactly one record, found {len(records)}")
        return records[0].sequence
    if os.path.exists(value):
        raise InputError(f"--wildtype={value}: not a file (a one-record FASTA file, or the sequence itself)")
    if any(c in value for c in "/\\."):  # a path, not a sequence
        raise InputNotFoundError(f"--wildtype={value}: no such file")
    return clean_sequence(value, source="--wildtype")


def read_mutations(path: str, column: str, wildtype: str, score_column: str | None):
    """``(header, rows, mutants, score column or None)``; every mutant checked, errors name file and line."""
    from ankh_jax.inference.scoring import parse_mutant

    if not os.path.isfile(path):
        raise InputNotFoundError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if column not in header:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(header) or 'none'})")
    if not rows:
        raise InputError(f"{path}: no rows")
    if score_column is None:
        score_column = next((c for c in DEFAULT_SCORE_COLUMNS if c in header), None)
    elif score_column not in header:
        raise InputError(f"{path}: no column {score_column!r} for --score_column")
    for line, row in enumerate(rows, start=2):
        parse_mutant(row[column] or "", wildtype, where=f"{path}: line {line}: mutant {row[column]!r}: ")
        if score_column is not None and try_float(row[score_column]) is None:
            raise InputError(f"{path}: line {line}: {score_column}={row[score_column]!r} is not a number")
    return header, rows, [r[column] for r in rows], score_column


def write_csv(path: str, header: list[str], rows: list[dict]) -> None:
    def write(f):
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)

    outputs.write_together([(path, write)])


def spearman_summary(scores, measured: list[float], column: str) -> dict:
    """``{"spearman": rho or None, "spearman_undefined": reason}``: never NaN, which JSON cannot hold."""
    import numpy as np

    from ankh_jax.downstream.metrics import spearman

    measured, scores = np.asarray(measured, np.float64), np.asarray(scores, np.float64)
    if measured.size < 2:
        reason = f"{measured.size} mutant; a rank correlation needs at least 2"
    elif not np.isfinite(measured).all():
        reason = f"{column} holds {int((~np.isfinite(measured)).sum())} non-finite values (NaN/inf)"
    elif np.all(measured == measured[0]):
        reason = f"{column} is constant ({measured[0]:g} for every mutant)"
    elif not np.isfinite(scores).all() or np.all(scores == scores[0]):
        reason = "the model's scores are constant or non-finite"
    else:
        return {"spearman": spearman(scores, measured)}
    return {"spearman": None, "spearman_undefined": reason}


def run(args: argparse.Namespace) -> dict:
    from ankh_jax.api import load_model

    if (args.fasta is None) == (args.mutations is None):
        raise InputError("give exactly one of --fasta (pseudo-likelihood) or --mutations (with --wildtype)")
    if args.max_records is not None and args.max_records < 1:
        raise InputError(f"--max_records={args.max_records}; must be at least 1")
    if args.batch_tokens < 1:
        raise InputError(f"--batch_tokens={args.batch_tokens}; must be positive")
    if args.fasta is not None:
        from ankh_jax.data.fasta import load_fasta

        if not os.path.isfile(args.fasta):
            raise InputNotFoundError(f"{args.fasta}: no such file")
        records = load_fasta(args.fasta)[: args.max_records]
        if not records:
            raise InputError(f"{args.fasta}: no records")
        _, records, output, split = shards.select(records, args, args.output)
    else:
        output, split = args.output, shards.resolve_shards(args.num_shards, args.shard_index)
        if split[0] > 1:
            raise InputError(f"--num_shards={split[0]}: --mutations scores one wild type; shards split a --fasta")
        if args.wildtype is None:
            raise InputError("--mutations needs --wildtype (a sequence or a one-record FASTA file)")
        wildtype = read_wildtype(args.wildtype)
        header, rows, mutants, score_column = read_mutations(args.mutations, args.mutant_column, wildtype,
                                                             args.score_column)
        if args.output_column in header:
            raise InputError(f"{args.mutations} already has a column {args.output_column!r}; pick --output_column")
    outputs.check_destinations({"--output": output}, {"--fasta": args.fasta, "--mutations": args.mutations,
                                                     "--wildtype": args.wildtype})
    model = load_model(args.model, step=args.step)
    prefix_id = model.prefix_id(args.prefix)
    config, params = model.decoding_params(args.dtype, args.num_devices)
    from ankh_jax.inference import scoring
    from ankh_jax.inference.devices import DataParallel

    scale = {"devices": DataParallel.of(params).size, "processes": split[0], "shard_index": split[1]}

    if args.fasta is not None:
        pll = scoring.pseudo_likelihood(config, params, [r.sequence for r in records],
                                        batch_tokens=args.batch_tokens, progress=True, prefix_id=prefix_id)
        out_rows = [{"id": r.id, "length": len(r.sequence), "pseudo_likelihood": f"{v:.8g}"}
                    for r, v in zip(records, pll)]
        write_csv(output, ["id", "length", "pseudo_likelihood"], out_rows)
        return {"output": output, "proteins": len(records), "mean_pseudo_likelihood": float(pll.mean()), **scale}
    scores = scoring.score_mutations(config, params, wildtype, mutants, batch_tokens=args.batch_tokens,
                                     progress=True, prefix_id=prefix_id)
    for row, value in zip(rows, scores):
        row[args.output_column] = f"{value:.8g}"
    write_csv(output, header + [args.output_column], rows)
    summary = {"output": output, "mutants": len(rows), **scale}
    if score_column is not None:
        summary.update(spearman_summary(scores, [float(r[score_column]) for r in rows], score_column))
        summary["score_column"] = score_column
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    from ankh_jax import flags
    from ankh_jax.storage.home import enable_compilation_cache

    enable_compilation_cache()  # every command shares $ANKH_JAX_HOME/xla_cache

    try:
        summary = run(args)
    except flags.command_errors() as err:
        return flags.report("score", err)
    print(f"wrote {summary.pop('output')}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
