"""The suite's time per test file, from the report of ``pytest --durations=0``, as a record under
benchmarks/results (issue 22 asks for the per-file durations before and after a change to the suite).

    python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=0 > REPORT.txt
    (REPORT: benchmarks/results/pytest-durations-<machine>-<date>.txt)
    python scripts/test_durations.py REPORT.txt [--tag=after]

The table lists every file's summed setup, call and teardown seconds, largest first, and the run's wall time and
counts as pytest's last line states them.
"""

from __future__ import annotations

import collections
import re

import bench_common

DURATION = re.compile(r"^([0-9.]+)s (setup|call|teardown)\s+(\S+?)::")
PYTEST_COMMAND = "python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=0"  # the Makefile's
SUMMARY = re.compile(r"(\d+) passed.*? in ([0-9.]+)s")


def per_file(lines: list[str]) -> dict[str, float]:
    totals: dict[str, float] = collections.defaultdict(float)
    for line in lines:
        match = DURATION.match(line)
        if match:
            totals[match.group(3)] += float(match.group(1))
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = bench_common.make_parser(__doc__, quick_help="unused: the record is read from a report")
    parser.add_argument("report", help="the text pytest printed with --durations=0")
    args = parser.parse_args()
    with open(args.report) as f:
        lines = f.read().splitlines()
    files = per_file(lines)
    summary = next((SUMMARY.search(line) for line in reversed(lines) if SUMMARY.search(line)), None)
    if not files or summary is None:
        raise SystemExit(f"test_durations: {args.report} holds no --durations=0 report with pytest's summary line")
    rows = [[name, round(seconds, 1)] for name, seconds in files.items()]
    print(bench_common.format_table(["file", "seconds"], rows))
    print(f"wall {summary.group(2)} s, {summary.group(1)} passed, test time summed over workers "
          f"{sum(files.values()):.0f} s")
    bench_common.write_result("test_durations", "cpu", head=["file", "seconds"], rows=rows, settings=vars(args),
                              out_dir=args.out_dir, wall_seconds=float(summary.group(2)),
                              passed=int(summary.group(1)), summed_seconds=round(sum(files.values()), 1),
                              pytest_command=PYTEST_COMMAND)


if __name__ == "__main__":
    main()
