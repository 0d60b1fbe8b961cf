"""The benchmark scripts still run and write their records (``--quick``: small shapes, no numbers asserted).

Speed is never asserted here (README: benchmarks print tables); what is asserted is that a script's record has
the fields README's tables cite, that ``--tag`` names the file, and that the formulations ``bench_levers.py``
compares compute the same gradients (a faster variant that computed something else would be reported as a lever).
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, out_dir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), "--quick", f"--out_dir={out_dir}",
                           *args], check=False, capture_output=True, text=True, env=env, cwd=out_dir,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_levers_formulations_agree_and_the_tag_names_the_record(tmp_path):
    _run("bench_levers.py", "--skip_flags", "--tag=smoke", out_dir=str(tmp_path))
    (name,) = os.listdir(tmp_path)
    assert name.startswith("bench_levers-cpu-") and name.endswith("-smoke.json")
    with open(tmp_path / name) as f:
        record = json.load(f)
    for field in ("command", "commit", "versions", "cpu_model", "cpu_count", "table"):
        assert field in record
    assert "--tag=smoke" in record["command"]
    rows = record["formulations"]
    assert {r["piece"] for r in rows} == {"attention", "gated MLP"} and len(rows) == 8
    # every variant computes the gradients of its piece's first variant, to float32 round-off
    assert max(float(r["max rel. gradient diff"]) for r in rows) < 1e-5


def test_bench_train_quick_writes_its_breakdown(tmp_path):
    _run("bench_train.py", "--skip_torch", out_dir=str(tmp_path))
    (name,) = os.listdir(tmp_path)
    with open(tmp_path / name) as f:
        record = json.load(f)
    (row,) = record["table"]
    assert row["framework"] == "ankh_jax (jax/flax)" and row["step ms"] > 0
    assert {r["part"] for r in record["breakdown"]} >= {"attention", "feed-forward", "optimizer", "loss"}


def test_records_name_no_directory_of_the_machine():
    """Committed records carry paths relative to the repo (an absolute path would point outside it)."""
    import glob

    for path in glob.glob(os.path.join(REPO, "benchmarks", "results", "*.json")):
        with open(path) as f:
            text = f.read()
        assert REPO not in text and '"/' not in text.replace('"/s"', ""), path


_DURATIONS_REPORT = (
    "============================= slowest durations ==============================",
    "12.50s call     tests/a/test_x.py::test_one",
    "2.00s setup    tests/a/test_x.py::test_one",
    "30.30s call     tests/b/test_y.py::test_two[param::with::colons]",
    "0.30s teardown tests/a/test_x.py::test_two",
    "================== 3 passed, 1 skipped in 40.10s (0:00:40) ===================",
)


def test_test_durations_sums_each_files_phases(tmp_path):
    report = tmp_path / "report.txt"
    report.write_text("\n".join(_DURATIONS_REPORT))
    out_dir = tmp_path / "out"
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "test_durations.py"), str(report),
                           f"--out_dir={out_dir}"], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (name,) = os.listdir(out_dir)
    with open(out_dir / name) as f:
        record = json.load(f)
    assert record["table"] == [{"file": "tests/b/test_y.py", "seconds": 30.3},
                               {"file": "tests/a/test_x.py", "seconds": 14.8}]
    assert (record["wall_seconds"], record["passed"], record["summed_seconds"]) == (40.1, 3, 45.1)
