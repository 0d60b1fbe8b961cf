"""What ``python -m ankh_jax.finetune`` survives (issue 12): bad labels and inputs are refused in one line before
anything is written; a re-run never retrains over a finished run, never mixes two runs (another encoder, mode or
setting) and resumes a killed one to the uninterrupted result; two runs never share a MODEL_DIR.

A tiny regression task (fluorescence's layout) on a one-layer random encoder keeps each run to seconds.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from ankh_jax import finetune
from ankh_jax.downstream import run_records, trainer
from ankh_jax.storage.lock import DirectoryLock
from ankh_jax.training.metrics import read_metrics

ALPHABET = list("ACDEFGHIKLMNPQRSTVWY")
ENCODER = ""  # a tiny random one-layer encoder directory, set for the module by use_tiny_encoder


@pytest.fixture(autouse=True, scope="module")
def use_tiny_encoder(random_encoder_dir):
    global ENCODER
    ENCODER = random_encoder_dir(0, 1)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train / validation / test CSVs: the label is the fraction of hydrophobic residues (learnable)."""
    root = tmp_path_factory.mktemp("fluorescence")
    rng = np.random.default_rng(0)
    for name, count in (("train", 24), ("validation", 8), ("test", 8)):
        rows = []
        for _ in range(count):
            seq = "".join(rng.choice(ALPHABET, int(rng.integers(15, 30))))
            rows.append([seq, f"{sum(c in 'AVLIMFWC' for c in seq) / len(seq):.4f}"])
        _write_csv(root / f"{name}.csv", rows)
    return root


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["primary", "log_fluorescence"])
        w.writerows(rows)


def _flags(model_dir, data_dir, *extra):
    return ["--gin_file=configs/downstream/fluorescence.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.DATA_DIR='{data_dir}'", f"--gin.ENCODER='{ENCODER}'", "--gin.run.progress=False",
            "--gin.StoppingConfig.max_epochs=3", "--gin.StoppingConfig.patience=5",
            "--gin.BatchingConfig.batch_size=8", "--gin.run.log_every=1", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _snapshot(model_dir) -> dict[str, bytes]:
    """Every output file's bytes (the lock's owner record says who ran last: not an output)."""
    out = {}
    for root, _, files in os.walk(model_dir):
        for name in files:
            if name.startswith(".lock"):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, model_dir)] = f.read()
    return out


@pytest.mark.parametrize("split,row", [("test", 3), ("train", 5)])
def test_non_finite_label_is_refused_before_any_work_naming_file_and_row(tmp_path, data_dir, capsys, split, row):
    """A NaN test label ranked as the largest value and moved Spearman (rc 0); in train, the loss went NaN after
    all the embedding work."""
    local = tmp_path / "data"
    local.mkdir()
    for name in ("train", "validation", "test"):
        with open(data_dir / f"{name}.csv") as f:
            rows = list(csv.reader(f))[1:]
        if name == split:
            rows[row - 1][1] = "nan" if split == "test" else "inf"
        _write_csv(local / f"{name}.csv", rows)
    model_dir = tmp_path / "run"
    assert finetune.main(_flags(model_dir, local)) == 2
    err = _one_line_error(capsys)
    assert f"{local / split}.csv: row {row}, column 'log_fluorescence'" in err and "not a finite number" in err
    assert not model_dir.exists()                         # nothing created, nothing embedded


def test_user_errors_are_one_line_exit_2_from_the_command_line(tmp_path, repo_root):
    """A missing gin file was `TypeError ... NoneType` with a traceback (the real CLI, exit status included)."""
    env = {**os.environ, "PYTHONPATH": str(repo_root), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "ankh_jax.finetune", "--gin_file=configs/downstream/nope.gin",
                           f"--gin.MODEL_DIR='{tmp_path / 'run'}'"], capture_output=True, text=True, env=env,
                          cwd=repo_root, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gin file 'configs/downstream/nope.gin' not found" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["model_dir_is_a_file", "missing_column", "outputs_without_run_json"])
def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path, data_dir, capsys, case):
    model_dir = tmp_path / "run"
    extra = []
    if case == "model_dir_is_a_file":
        model_dir.write_text("not a directory")
        expected = f"MODEL_DIR {model_dir} is a file"
    elif case == "missing_column":
        extra = ["--gin.fluorescence_task.label_column='fluorescence'"]
        expected = f"{data_dir / 'train.csv'}: missing column(s) ['fluorescence']"
    else:
        model_dir.mkdir()
        (model_dir / "results.json").write_text("{}")        # from a run that left no record of itself
        expected = "no run.json"
    before = _snapshot(model_dir) if model_dir.is_dir() else None
    assert finetune.main(_flags(model_dir, data_dir, *extra)) == 2
    assert expected in _one_line_error(capsys)
    if before is None:
        assert not model_dir.exists() or model_dir.is_file()
    else:
        assert _snapshot(model_dir) == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """One uninterrupted run, shared: the tests that use it check that it is left byte-identical."""
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    assert finetune.main(_flags(model_dir, data_dir)) == 0
    return model_dir


def test_finished_run_is_never_retrained_or_mixed_with_another(tmp_path, data_dir, finished_run, capsys,
                                                               random_encoder_dir):
    """A re-run retrained over results.json and best/ and appended a second run to metrics.jsonl; another
    ENCODER was refused only after config.gin had been rewritten. The identity is the weights, not the ENCODER
    string: an HF export of the same random encoder is the same run."""
    from ankh_jax.downstream.encoder_source import load_encoder
    from ankh_jax.io.hf_export import export

    model_dir = finished_run
    done = _snapshot(model_dir)
    assert "results.json" in done and not (model_dir / run_records.EPOCH_STATE_DIR).exists()
    capsys.readouterr()

    enc = load_encoder(ENCODER)
    export(enc.config, enc.params, str(tmp_path / "hf"), encoder_only=True)
    for same in ([], [f"--gin.ENCODER='{tmp_path / 'hf'}'"]):  # the same run: report, write nothing
        assert finetune.main(_flags(model_dir, data_dir, *same)) == 0
        assert "already holds the results of this run" in capsys.readouterr().out
        assert _snapshot(model_dir) == done

    for extra, named in (([f"--gin.ENCODER='{random_encoder_dir(1, 1)}'"], "encoder_fingerprint"),
                         (["--gin.run.mode='full'"], "mode: 'frozen' in run.json, 'full' now"),
                         (["--gin.StoppingConfig.max_epochs=4"], "stopping.max_epochs: 3 in run.json, 4 now")):
        assert finetune.main(_flags(model_dir, data_dir, *extra)) == 2
        assert named in _one_line_error(capsys)
        assert _snapshot(model_dir) == done                          # config.gin included


def _rows_without_timings(path):
    timing = {"steps_per_s", "epoch_seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(str(path))]


def test_sigkilled_process_resumes_to_the_uninterrupted_result(tmp_path, data_dir, finished_run, repo_root):
    """A real SIGKILL (no cleanup runs) right after epoch 1's state is saved, and a metrics line cut short by the
    crash: the same command again continues after epoch 1 and ends with the results, best epoch and metrics rows
    of a run that was never interrupted, each epoch logged once."""
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(repo_root), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "ankh_jax.finetune", *_flags(killed, data_dir)], cwd=repo_root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (killed / run_records.EPOCH_STATE_DIR / "1").is_dir() and proc.poll() is None:
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "results.json").exists()
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "epo')                                   # a crash mid-write
    assert finetune.main(_flags(killed, data_dir)) == 0
    a = json.loads((finished_run / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert b["tests"] == a["tests"] and b["valid_best"] == a["valid_best"]
    assert (b["best_epoch"], b["epochs_run"], b["steps"]) == (a["best_epoch"], a["epochs_run"], a["steps"])
    assert _rows_without_timings(killed) == _rows_without_timings(finished_run)
    assert [r["epoch"] for r in read_metrics(str(killed)) if "split" in r] == [1, 2, 3]


def test_second_run_on_a_model_dir_in_use_refuses_naming_the_first(tmp_path, data_dir, capsys):
    model_dir = tmp_path / "run"
    with DirectoryLock(str(model_dir), "fine-tuning"):
        assert finetune.main(_flags(model_dir, data_dir)) == 2
    err = _one_line_error(capsys)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in err
    assert sorted(os.listdir(model_dir)) == [".lock", ".lock.owner"]


def test_best_checkpoint_replacement_cut_short_keeps_the_old_one(tmp_path):
    """``best/`` is swapped in by renames; killed between them, the old checkpoint comes back."""
    best = tmp_path / "best"
    (tmp_path / "best.old").mkdir()
    (tmp_path / "best.old" / "item").write_text("old")
    (tmp_path / "best.new").mkdir()                                   # complete or not: never trusted
    trainer.recover_checkpoint(str(best))
    assert (best / "item").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_a_misspelled_macro_on_the_command_line_is_an_error(tmp_path, data_dir, capsys):
    model_dir = tmp_path / "run"
    assert finetune.main(_flags(model_dir, data_dir, "--gin.ENCODR='elsewhere'")) == 2
    err = _one_line_error(capsys)
    assert "ENCODR" in err and "did you mean ENCODER" in err
    assert not model_dir.exists()


@pytest.fixture(scope="module")
def leaking_data_dir(tmp_path_factory, data_dir):
    """Issue 24: the test CSV is 12 training rows verbatim; training repeats 3 of its rows (27 rows, 24 distinct);
    validation is clean."""
    root = tmp_path_factory.mktemp("leaking")
    with open(data_dir / "train.csv", newline="") as f:
        train = list(csv.reader(f))[1:]
    with open(data_dir / "validation.csv", newline="") as f:
        valid = list(csv.reader(f))[1:]
    _write_csv(root / "train.csv", train + train[:3])
    _write_csv(root / "validation.csv", valid)
    _write_csv(root / "test.csv", train[5:17])
    return root


def test_leaking_splits_are_counted_in_results_and_run_json_and_warned(tmp_path, leaking_data_dir, capsys):
    """Fine-tuning with a test CSV equal to 12 training rows, and duplicated training rows, ran silently."""
    model_dir = tmp_path / "run"
    assert finetune.main(_flags(model_dir, leaking_data_dir, "--gin.StoppingConfig.max_epochs=1")) == 0
    expected = {"train": {"rows": 27, "duplicates": 3},
                "valid": {"rows": 8, "duplicates": 0, "in_train": 0},
                "test/fluorescence": {"rows": 12, "duplicates": 0, "in_train": 12}}
    assert json.loads((model_dir / "results.json").read_text())["leakage"] == expected
    assert json.loads((model_dir / "run.json").read_text())["leakage"] == expected
    warnings = [line for line in capsys.readouterr().err.splitlines() if "leak" in line]
    assert len(warnings) == 1 and "test/fluorescence: 12 of 12 sequences identical to training ones" in warnings[0] \
        and "train: 3 of 27 rows repeat an earlier sequence" in warnings[0], warnings


def test_strict_refuses_leaking_splits_in_one_line_before_anything_is_written(tmp_path, leaking_data_dir,
                                                                               data_dir, capsys):
    model_dir = tmp_path / "run"
    assert finetune.main(_flags(model_dir, leaking_data_dir, "--gin.run.strict=True")) == 2
    line = _one_line_error(capsys)
    assert "test/fluorescence: 12 of 12 sequences identical to training ones" in line and "run.strict" in line
    assert not model_dir.exists()
    # Clean splits pass the strict check (the run itself is not needed to show that: it fails later, on purpose,
    # on a missing encoder, which is checked after the splits).
    assert finetune.main(_flags(model_dir, data_dir, "--gin.run.strict=True", "--gin.ENCODER='/nonexistent'")) == 2
    assert "no such model directory" in _one_line_error(capsys)
