"""Two pretraining runs' curves side by side (``metrics.jsonl``), as a record: e.g. ``make demo``'s pretraining
before and after a change to the optimizer.

    python scripts/compare_train_curves.py BEFORE_DIR AFTER_DIR --labels=before,after [--commits=abc,def]
        [--tag=...]

The table lists, at every step both runs logged, each run's training loss and masked-token accuracy, and the eval
rows of both; the record keeps every row.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import format_table, make_parser, write_result


def _rows(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = make_parser(__doc__, quick_help="no difference (it only reads files)")
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--labels", default="before,after")
    parser.add_argument("--commits", default="", help="the commits that produced the two runs")
    args = parser.parse_args()
    labels = args.labels.split(",")
    runs = {label: _rows(d) for label, d in zip(labels, (args.before, args.after))}
    by_step = {label: {(r["kind"], r["step"]): r for r in rows} for label, rows in runs.items()}
    keys = sorted(set(by_step[labels[0]]) & set(by_step[labels[1]]), key=lambda k: (k[0] != "train", k[1]))
    head = ["kind", "step"] + [f"{what} {label}" for what in ("loss", "accuracy") for label in labels]
    rows = [[kind, step] + [round(by_step[label][(kind, step)][what], 4) for what in ("loss", "accuracy")
                            for label in labels] for kind, step in keys]
    print(format_table(head, rows))
    settings = {k: v for k, v in vars(args).items() if k not in ("before", "after")}
    write_result("compare_train_curves", "cpu", head=head, rows=rows, settings=settings, quick=args.quick,
                 out_dir=args.out_dir, runs={label: rows for label, rows in runs.items()})


if __name__ == "__main__":
    main()
