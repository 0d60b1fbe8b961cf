"""Pictures: TensorBoard reads the trainer's event files; ``python -m ankh_jax.plot`` draws decodable PNGs from
training runs (finished, running, without eval rows) and embeddings; the nearest-neighbour label agreement has
exact known answers; fine-tuning runs get their per-kind plots; bad input gives one line and exit 2.
"""

import json
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ankh_jax import plot
from ankh_jax.plots import embedding_map
from ankh_jax.plots.training import draw_training_plots, training_plot_path
from ankh_jax.train import main as train_main
from ankh_jax.training.metrics import read_metrics

# The tiny model for 4 steps, evaluated at steps 2 and 4 (tests/training/test_train.py runs the same configuration).
TRAIN_FLAGS = [
    "--gin_file=configs/pretrain_tiny_cpu.gin",
    "--gin.INPUTS_LENGTH=64", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=4", "--gin.WARMUP_STEPS=1",
    "--gin.LoopConfig.log_every_steps=1", "--gin.CheckpointConfig.every_steps=4", "--gin.EvalConfig.every_steps=2",
    "--gin.EvalConfig.steps=1", "--gin.LoopConfig.progress_bar=False", "--gin.make_input.shuffle_buffer_size=64",
]
README_TRAIN_SCALARS = {"loss", "accuracy", "learning_rate", "grad_norm", "target_tokens_per_s", "mfu"}


def assert_png(path):
    """The file exists, is a decodable PNG of a real size, and is not one flat colour."""
    import matplotlib.image

    assert path is not None and path.is_file() and path.stat().st_size > 1000, path
    pixels = matplotlib.image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, pixels.shape
    assert pixels.std() > 0.01


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("pretrain") / "run"
    assert train_main([*TRAIN_FLAGS, f"--gin.MODEL_DIR='{model_dir}'"]) == 0
    return model_dir


def test_matplotlib_is_imported_only_to_draw():
    """``import ankh_jax``, the embedding / export CLIs and the plot CLI itself load neither matplotlib nor TF."""
    code = ("import sys, ankh_jax, ankh_jax.inference.embedding, ankh_jax.export_hf, ankh_jax.plot, ankh_jax.plots.training; "
            "bad = [m for m in ('matplotlib', 'tensorflow') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_reads_the_scalars_the_readme_lists(run_dir):
    from tensorboard.backend.event_processing import event_accumulator

    rows = read_metrics(str(run_dir))
    for kind, expected in (("train", README_TRAIN_SCALARS), ("eval", {"loss", "accuracy"})):
        acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / kind),
                                                 size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        assert expected <= set(acc.Tags()["scalars"]), (kind, acc.Tags()["scalars"])
        logged = [r for r in rows if r["kind"] == kind]
        assert [r["step"] for r in logged] == ([1, 2, 3, 4] if kind == "train" else [2, 4])
        for tag in expected:  # the same numbers as metrics.jsonl (event files store float32)
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [r["step"] for r in logged], tag
            np.testing.assert_allclose([e.value for e in events], [r[tag] for r in logged], rtol=1e-6, err_msg=tag)


# ---------------------------------------------------------------------------------------------- training curves
def test_training_plot_of_a_finished_run(run_dir):
    path = draw_training_plots(str(run_dir))
    assert path == training_plot_path(str(run_dir))
    assert_png(run_dir / "plots" / "training.png")
    assert not [p for p in (run_dir / "plots").iterdir() if p.name != "training.png"]  # no temporary left


def test_training_plot_of_a_running_run_skips_the_partial_last_line(run_dir, tmp_path, capsys):
    running = tmp_path / "running"
    running.mkdir()
    text = (run_dir / "metrics.jsonl").read_text()
    (running / "metrics.jsonl").write_text(text + '{"step": 5, "kind": "train", "lo')
    assert plot.main([str(running)]) == 0
    assert_png(running / "plots" / "training.png")
    partial_line = len(text.splitlines()) + 1
    assert f"skipped 1 unreadable line(s) ({partial_line})" in capsys.readouterr().err


def test_training_plot_without_eval_rows_says_so(run_dir, tmp_path, capsys):
    no_eval = tmp_path / "no_eval"
    no_eval.mkdir()
    rows = [r for r in read_metrics(str(run_dir)) if r["kind"] == "train"]
    (no_eval / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "elsewhere" / "curves.png"
    assert plot.main([str(no_eval), f"--output={out}"]) == 0
    assert_png(out)
    assert "no eval rows" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("contents", [None, "", '{"step": 1, "kind'])
def test_training_plot_bad_directory_is_one_line_and_exit_2(tmp_path, capsys, contents):
    model_dir = tmp_path / "run"
    if contents is not None:
        model_dir.mkdir()
        (model_dir / "metrics.jsonl").write_text(contents)
    assert plot.main([str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # a partial-only file also gets the "skipped" line first
    assert last.startswith("error: ") and str(model_dir) in last, err
    assert not (model_dir / "plots").exists()
    assert draw_training_plots(str(model_dir)) is None  # the trainer's entry point never raises


# ---------------------------------------------------------------------------------------------- embeddings
def test_nearest_neighbour_agreement_is_exactly_three_quarters():
    # Angles 0, 11.3, 24.2 and 90 degrees: 0 -> 1 (A, A), 1 -> 0 (A, A), 2 -> 1 (B, A: the miss), 3 -> 2 (B, B).
    vectors = np.array([[1.0, 0.0], [1.0, 0.2], [1.0, 0.45], [0.0, 1.0]])
    labels = ["A", "A", "B", "B"]
    assert embedding_map.nearest_neighbour_agreement(vectors, labels) == 0.75
    scaled = vectors * np.array([[3.0], [0.5], [7.0], [0.01]])  # cosine: the lengths do not matter
    assert embedding_map.nearest_neighbour_agreement(scaled, labels, chunk=1) == 0.75
    assert embedding_map.chance_agreement(["A", "A", "B", "A"]) == 0.625  # (3/4)^2 + (1/4)^2


def test_nearest_neighbour_agreement_matches_scipy_cosine_distances():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(97, 8))
    labels = rng.integers(0, 3, 97)
    distances = cdist(vectors, vectors, metric="cosine")
    np.fill_diagonal(distances, np.inf)
    expected = np.mean(labels[distances.argmin(axis=1)] == labels)
    assert embedding_map.nearest_neighbour_agreement(vectors, labels, chunk=10) == pytest.approx(expected, abs=0)


def _write_embeddings(path, arrays):
    from ankh_jax.io.embeddings_h5 import h5_key

    with h5py.File(path, "w") as f:
        for record_id, a in arrays.items():
            f.create_dataset(h5_key(record_id), data=a).attrs["id"] = record_id


@pytest.fixture
def labelled_embeddings(tmp_path, repo_root):
    """40 of the shipped Pfam proteins, each embedded near its family's own axis, some per residue [L, d] (mean
    pooling must recover the axis), plus two ids that no labels file has. Returns (path, exact agreement)."""
    import csv

    with open(repo_root / "data" / "pfam_family_train.csv") as f:
        rows = list(csv.DictReader(f))[:40]
    families = sorted({r["label"] for r in rows})
    rng = np.random.default_rng(1)
    arrays = {}
    for i, r in enumerate(rows):
        axis = np.eye(16, dtype=np.float32)[families.index(r["label"])] + rng.normal(0, 0.01, 16).astype(np.float32)
        if i % 2:  # per residue: rows that average to the axis
            noise = rng.normal(0, 0.5, (5, 16)).astype(np.float32)
            arrays[r["id"]] = axis + noise - noise.mean(axis=0)
        else:
            arrays[r["id"]] = axis
    arrays["unlabelled/1-10"] = np.ones(16, np.float32)
    arrays["unlabelled/2"] = -np.ones(16, np.float32)
    path = tmp_path / "emb.h5"
    _write_embeddings(path, arrays)
    # Exact: a protein agrees with its nearest neighbour iff another protein has its family (a family's axis).
    counts = {f: sum(r["label"] == f for r in rows) for f in families}
    return path, sum(counts[r["label"]] > 1 for r in rows) / len(rows)


def test_embedding_map_cli_colours_by_label_and_prints_the_agreement(labelled_embeddings, repo_root, capsys):
    path, expected = labelled_embeddings
    assert 0.5 < expected < 1  # some families have one protein among the 40: those can never agree
    labels = ",".join(str(repo_root / "data" / f"pfam_family_{s}.csv") for s in ("train", "valid", "test"))
    assert plot.main([f"--embeddings={path}", f"--labels={labels}"]) == 0
    captured = capsys.readouterr()
    assert_png(path.with_name("emb.map.png"))
    assert f"emb.h5: nearest-neighbour label agreement {expected:.4f}" in captured.out
    assert "skipped 2 of 42 proteins with no label" in one_error_line(captured.err)


def test_embedding_map_without_labels(labelled_embeddings, tmp_path, capsys):
    path, _ = labelled_embeddings
    out = tmp_path / "plain.png"
    assert plot.main([f"--embeddings={path}", f"--output={out}"]) == 0
    assert_png(out)
    assert "agreement" not in capsys.readouterr().out


def test_pca_matches_the_covariance_eigenvectors():
    """Against an independent float64 reference: the top two eigenvectors of the covariance matrix (eigh)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 5.0
    coords = embedding_map.pca_2d(x)
    centred = x - x.mean(axis=0)
    _, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    top = eigenvectors[:, ::-1][:, :2]
    top *= np.sign(top[np.abs(top).argmax(axis=0), [0, 1]])  # the same sign rule: largest loading positive
    np.testing.assert_allclose(coords, centred @ top, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", ["missing_h5", "not_h5", "missing_labels", "wrong_column"])
def test_embedding_map_bad_input_is_one_line_and_exit_2(labelled_embeddings, tmp_path, repo_root, capsys, case):
    path, _ = labelled_embeddings
    csv_file = repo_root / "data" / "pfam_family_test.csv"
    argv, named = {
        "missing_h5": ([f"--embeddings={tmp_path / 'nope.h5'}"], "nope.h5"),
        "not_h5": ([f"--embeddings={csv_file}"], str(csv_file)),
        "missing_labels": ([f"--embeddings={path}", f"--labels={tmp_path / 'nope.csv'}"], "nope.csv"),
        "wrong_column": ([f"--embeddings={path}", f"--labels={csv_file}", "--label_column=family"], "'family'"),
    }[case]
    out = tmp_path / "out" / "map.png"
    assert plot.main([*argv, f"--output={out}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and named in line, line
    assert not out.parent.exists()


# ---------------------------------------------------------------------------------------------- fine-tuning
def _task(kind, tests, classes=None, metric="accuracy"):
    from ankh_jax.downstream.task_spec import Examples, TaskData, TaskSpec

    spec = TaskSpec(name=f"toy_{kind}", kind=kind, metric=metric, data_dir="", train=None, valid=None,
                    tests=tuple((name, name) for name in tests))
    splits = {f"test/{name}": Examples([f"S{i}" for i in range(len(labels))], labels)
              for name, labels in tests.items()}
    return TaskData(spec, splits, classes)


def _draw(model_dir, data, predict):
    """What the runner does after training: each test split predicted once, its kind's pictures drawn."""
    from ankh_jax.plots.finetune_plots import draw_finetune_plots

    def test_plots():
        predictions = {name[len("test/"):]: predict(data.splits[name]) for name in data.test_names()}
        return data.spec.label_kind.draw_test_plots(str(model_dir), data, predictions)

    return draw_finetune_plots(str(model_dir), test_plots)


def _finetune_metrics(model_dir, runs=1):
    rows = []
    for _ in range(runs):  # a second run in the same directory appends, its steps start again
        rows += [{"step": 1, "epoch": 1, "loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-4, "steps_per_s": 3.0},
                 {"step": 5, "epoch": 1, "split": "valid", "accuracy": 0.5, "best": True, "epoch_seconds": 1.0},
                 {"step": 6, "epoch": 2, "loss": 1.0, "grad_norm": 1.0, "learning_rate": 1e-3, "steps_per_s": 3.0},
                 {"step": 10, "epoch": 2, "split": "valid", "accuracy": 0.4, "best": False, "epoch_seconds": 1.0}]
    model_dir.mkdir(exist_ok=True)
    (model_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_confusion_matrix_counts_scored_positions_only():
    from ankh_jax.downstream.kinds import get, predicted_classes
    from ankh_jax.plots.finetune_plots import confusion_matrix

    predicted, true = predicted_classes(get("residue_class"), [np.array([0, 1, 2, 2]), np.array([1, 1])],
                                        [np.array([0, 2, 2, -100]), np.array([1, -100])])
    np.testing.assert_array_equal(confusion_matrix(predicted, true, 3), [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    predicted, true = predicted_classes(get("sequence_binary"), [-1.0, 2.0, 0.5], [0, 0, 1])
    np.testing.assert_array_equal(confusion_matrix(predicted, true, 2), [[1, 1], [0, 1]])


def test_confusion_matrix_of_many_classes_keeps_the_most_frequent():
    from ankh_jax.plots.finetune_plots import most_frequent_block

    counts = np.array([[1, 0, 0, 2], [0, 5, 1, 0], [0, 0, 0, 0], [1, 0, 0, 3]])
    block, rows, columns = most_frequent_block(counts, ["a", "b", "c", "d"], 2)
    assert rows == ["b", "d"] and columns == ["b", "d", "other"]
    np.testing.assert_array_equal(block, [[5, 0, 1], [0, 3, 1]])


def test_split_runs_keeps_runs_apart():
    from ankh_jax.plots.finetune_plots import split_runs

    rows = [{"step": 1}, {"step": 5}, {"step": 5, "split": "valid"}, {"step": 1}, {"step": 2}]
    assert split_runs(rows) == [rows[:3], rows[3:]]


def test_finetune_plots_per_residue_confusion_matrix(tmp_path, capsys):
    rng = np.random.default_rng(3)
    tests = {name: [rng.integers(0, 3, 30) for _ in range(4)] for name in ("CASP12", "CB513", "TS115")}
    data = _task("residue_class", tests, classes=("H", "E", "C"))
    model_dir = tmp_path / "ssp3"
    _finetune_metrics(model_dir, runs=2)
    seen = []

    def predict(examples):
        seen.append(len(examples.sequences))
        return [np.where(y == 2, 0, y) for y in examples.labels]   # C is always called H

    written = _draw(model_dir, data, predict)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["learning_curves.png", "confusion_matrix.png"]
    for path in written:
        assert_png(pathlib.Path(path))
    assert seen == [4, 4, 4]
    assert "holds 2 runs" in one_error_line(capsys.readouterr().err)


def test_finetune_plots_regression_and_contacts(tmp_path, capsys):
    regression = _task("sequence_regression", {"fluorescence": [0.5, 1.0, 2.0, 3.5]}, metric="spearman")
    model_dir = tmp_path / "fluorescence"
    _finetune_metrics(model_dir)
    written = _draw(model_dir, regression, lambda ex: [float(y) ** 2 for y in ex.labels])
    assert written[-1].endswith("regression_scatter.png")
    assert_png(pathlib.Path(written[-1]))

    length = 30
    contacts = np.abs(np.subtract.outer(np.arange(length), np.arange(length))) % 7 == 0
    labels = [(contacts, np.ones(length, bool))] * 5
    contact_task = _task("contact", {"proteinnet": labels}, metric="contact_precision")
    model_dir = tmp_path / "contacts"  # no metrics.jsonl: the learning curves are skipped, the maps drawn
    seen = []

    def predict(examples):
        seen.append(len(examples.sequences))
        return [c.astype(np.float32) for c, _ in examples.labels]

    written = _draw(model_dir, contact_task, predict)
    assert seen == [5]  # the test set predicted once (the run scores it too); a few proteins drawn
    assert [p.rsplit("/", 1)[-1] for p in written] == ["contact_maps.png"]
    assert_png(model_dir / "plots" / "contact_maps.png")
    assert "learning curves not drawn" in one_error_line(capsys.readouterr().err)


def test_many_classes_stay_readable(tmp_path, capsys):
    """40 fold-like classes: the confusion matrix keeps the 25 most frequent; the map colours 19 and greys the rest."""
    from ankh_jax.plots.finetune_plots import MAX_MATRIX_CLASSES

    rng = np.random.default_rng(5)
    labels = list(rng.integers(0, 40, 300))
    data = _task("sequence_class", {"fold": labels}, classes=tuple(f"f{i}" for i in range(40)))
    written = _draw(tmp_path, data, lambda ex: [np.eye(40)[y] for y in ex.labels])
    assert_png(pathlib.Path(written[-1]))
    assert f"show the {MAX_MATRIX_CLASSES} most frequent" in capsys.readouterr().err
    panel = embedding_map.EmbeddingPanel("many", [str(i) for i in range(300)], rng.normal(size=(300, 5)))
    out = tmp_path / "map.png"
    agreements = embedding_map.draw_embedding_maps([panel], str(out), labels={str(i): f"f{y}" for i, y in
                                                                                enumerate(labels)})
    assert_png(out)
    assert 0 <= agreements["many"] <= 1


def test_finetune_plots_never_raise(tmp_path, capsys):
    data = _task("sequence_class", {"test": [0, 1]}, classes=("a", "b"))

    def broken(examples):
        raise RuntimeError("predict failed")

    _finetune_metrics(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in _draw(tmp_path, data, broken)] == ["learning_curves.png"]
    assert "test-set plots not drawn: RuntimeError: predict failed" in one_error_line(capsys.readouterr().err)


def test_finetune_run_writes_its_plots(tmp_path, random_encoder_dir, monkeypatch):
    """Through the runner: a tiny regression task, one epoch; the plots sit beside results.json. The test split is
    predicted once (issue 22: once to score it, then again to draw it), and the scatter's Spearman is the score's."""
    import csv

    import gin

    gin.clear_config()  # the pretraining run above leaves gin locked; importing the runner registers configurables
    from ankh_jax import finetune
    from ankh_jax.downstream import trainer

    predicted = []  # the size of each split predicted (args: forward, trainable, frozen, examples, source)
    monkeypatch.setattr(trainer, "predict", lambda *args, real=trainer.predict:
                        predicted.append(len(args[3].sequences)) or real(*args))
    rng = np.random.default_rng(4)
    for name, count in (("train", 24), ("validation", 8), ("test", 6)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["primary", "log_fluorescence"])
            for _ in range(count):
                seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), rng.integers(10, 20)))
                writer.writerow([seq, seq.count("K") + rng.normal(0, 0.1)])
    model_dir = tmp_path / "run"
    try:
        finetune.main(["--gin_file=configs/downstream/fluorescence.gin", f"--gin.MODEL_DIR='{model_dir}'",
                       f"--gin.DATA_DIR='{tmp_path}'", f"--gin.ENCODER='{random_encoder_dir(0, 1)}'",
                       "--gin.run.progress=False",
                       "--gin.StoppingConfig.max_epochs=1"])
    finally:
        gin.clear_config()
    assert (model_dir / "results.json").is_file()
    assert predicted == [8, 6]                     # validation after the one epoch, then the test split once
    assert sorted(p.name for p in (model_dir / "plots").iterdir()) == ["learning_curves.png", "regression_scatter.png"]
    for path in (model_dir / "plots").iterdir():
        assert_png(path)
