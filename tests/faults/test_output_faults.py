"""Outputs that never collide, never go half-written or mixed, and are readable by a colleague; errors that tell
the truth about the flag or file they concern (generate, score, export_hf, the gin flags, start-up)."""

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from ankh_jax import export_hf, generate, score
from ankh_jax.io import loading

SEQS = ("MKTAYIAKQR", "GSHMSLFDFFKNKG")


@pytest.fixture()
def fasta(tmp_path):
    path = tmp_path / "in.fasta"
    path.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(SEQS)))
    return path


@pytest.fixture()
def no_model_load(monkeypatch):
    """A refusal "before compute" is one that never opens the model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(loading, "load", refuse)


def _listing(path) -> dict:
    return {p: (os.stat(os.path.join(path, p)).st_size, os.stat(os.path.join(path, p)).st_mtime_ns)
            for p in sorted(os.listdir(path))}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _generate(model, fasta, *extra):
    return generate.main([f"--model={model}", f"--fasta={fasta}", "--mask=2", "--strategy=greedy", *extra])


@pytest.mark.parametrize("flags,named", [
    (["--output={d}/out.csv"], "--log_likelihoods={d}/out.csv is the same file as the output --output={d}/out.csv"),
    (["--output={d}/v.fasta", "--log_likelihoods={d}/v.fasta"], "is the same file as the output --output"),
    (["--output={d}/v.fasta", "--log_likelihoods={d}/./v.fasta"], "is the same file as the output --output"),
    (["--output={d}/in.fasta"], "--output={d}/in.fasta is the same file as the input --fasta"),
    (["--output={d}/v.fasta", "--log_likelihoods={d}/in.fasta"], "is the same file as the input --fasta"),
])
def test_generate_outputs_that_collide_are_refused_before_compute_writing_nothing(
        hf_dir_a, fasta, tmp_path, capsys, no_model_load, flags, named):
    """Before: the FASTA overwrote the CSV (or the input), the summary still named it, exit 0."""
    before = _listing(tmp_path)
    argv = [f.format(d=tmp_path) for f in flags]
    assert _generate(hf_dir_a, fasta, *argv) == 2
    assert named.format(d=tmp_path) in _one_line(capsys)
    assert _listing(tmp_path) == before


def test_score_output_equal_to_an_input_is_refused(hf_dir_a, fasta, tmp_path, capsys, no_model_load):
    before = fasta.read_text()
    assert score.main([f"--model={hf_dir_a}", f"--fasta={fasta}", f"--output={fasta}"]) == 2
    assert "is the same file as the input --fasta" in _one_line(capsys)
    dms = tmp_path / "dms.csv"
    dms.write_text("mutant,DMS_score\nM1A,0.5\nK2R,1.0\n")
    os.symlink(dms, tmp_path / "link.csv")
    assert score.main([f"--model={hf_dir_a}", f"--mutations={dms}", f"--wildtype={SEQS[0]}",
                       f"--output={tmp_path / 'link.csv'}"]) == 2
    assert "is the same file as the input --mutations" in _one_line(capsys)
    assert fasta.read_text() == before and dms.read_text().startswith("mutant,DMS_score\n")


@pytest.mark.parametrize("where,named", [
    ("a_directory", "is a directory"),
    ("a_file/out.fasta", "is a file, not a directory"),
    ("/proc/ankh_jax_out.fasta", "cannot create files in /proc"),
])
def test_an_output_that_cannot_be_written_is_refused_before_compute(
        hf_dir_a, fasta, tmp_path, capsys, no_model_load, where, named):
    """Before: the run failed after the compute, with a traceback or a message naming an internal temporary file,
    and generate left ``outdir.csv`` behind."""
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "a_file").write_text("x")
    before = _listing(tmp_path)
    out = where if where.startswith("/") else str(tmp_path / where)
    assert _generate(hf_dir_a, fasta, f"--output={out}") == 2
    line = _one_line(capsys)
    assert f"--output={out}" in line and named in line, line
    assert score.main([f"--model={hf_dir_a}", f"--fasta={fasta}", f"--output={out}"]) == 2
    assert named in _one_line(capsys)
    assert _listing(tmp_path) == before


def test_generate_writes_its_fasta_and_csv_as_a_pair(hf_dir_a, fasta, tmp_path, monkeypatch, capsys):
    """A run that fails while writing (a full disk) leaves the earlier pair whole and no temporary file; a kill
    between the renames leaves no FASTA beside another run's CSV."""
    out, csv_path = tmp_path / "v.fasta", tmp_path / "v.csv"
    assert _generate(hf_dir_a, fasta, f"--output={out}", "--seed=1") == 0
    first = (out.read_text(), csv_path.read_text())
    real_fsync = os.fsync
    calls = []

    def disk_full_on_the_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        _generate(hf_dir_a, fasta, f"--output={out}", "--strategy=sample", "--seed=2")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (out.read_text(), csv_path.read_text()) == first
    assert sorted(os.listdir(tmp_path)) == ["in.fasta", "v.csv", "v.fasta"]

    # Killed after the CSV is renamed in, before the FASTA is: the old FASTA is already gone.
    real_replace = os.replace

    def killed_before_the_last_rename(src, dst):
        if os.fspath(dst) == str(out):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        _generate(hf_dir_a, fasta, f"--output={out}", "--seed=3", "--num_samples=2")
    assert not out.exists() and csv_path.read_text() != first[1]  # never run 3's CSV beside run 1's FASTA


def test_outputs_honour_the_umask(hf_dir_a, fasta, tmp_path):
    """Before: generate, score and export_hf's model.safetensors were 0600 (mkstemp's and safetensors' mode)."""
    old = os.umask(0o027)
    try:
        assert _generate(hf_dir_a, fasta, f"--output={tmp_path / 'v.fasta'}") == 0
        assert score.main([f"--model={hf_dir_a}", f"--fasta={fasta}", f"--output={tmp_path / 's.csv'}"]) == 0
        assert export_hf.main([f"--model={hf_dir_a}", f"--output={tmp_path / 'hf'}"]) == 0
    finally:
        os.umask(old)
    for name in ("v.fasta", "v.csv", "s.csv", "hf/model.safetensors", "hf/config.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name


@pytest.mark.parametrize("where,named", [("a_file/hf", "is a file, not a directory"),
                                         ("/proc/ankh_jax_hf", "cannot create files in /proc")])
def test_export_hf_to_an_unwritable_place_is_refused_before_loading(hf_dir_a, tmp_path, capsys, no_model_load,
                                                                     where, named):
    """Before: the model was loaded and converted, then the export failed with a traceback."""
    (tmp_path / "a_file").write_text("x")
    out = where if where.startswith("/") else str(tmp_path / where)
    assert export_hf.main([f"--model={hf_dir_a}", f"--output={out}"]) == 2
    line = _one_line(capsys)
    assert f"--output={out}" in line and named in line, line
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_errors_name_the_flag_that_is_wrong(hf_dir_a, fasta, tmp_path, capsys, no_model_load):
    """Before: a missing --wildtype file was "invalid residue '.' at position 3"; generate took --batch_tokens=0."""
    dms = tmp_path / "dms.csv"
    dms.write_text("mutant,DMS_score\nM1A,0.5\n")
    assert score.main([f"--model={hf_dir_a}", f"--mutations={dms}", "--wildtype=wt.fasta",
                       f"--output={tmp_path / 'o.csv'}"]) == 2
    assert _one_line(capsys) == "score: error: --wildtype=wt.fasta: no such file"
    for bad in ("0", "-5"):
        assert _generate(hf_dir_a, fasta, f"--output={tmp_path / 'v.fasta'}", f"--batch_tokens={bad}") == 2
        assert f"--batch_tokens={bad}; must be positive" in _one_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["dms.csv", "in.fasta"]


@pytest.mark.parametrize("scores,reason", [
    (["0.5", "nan", "1.0"], "DMS_score holds 1 non-finite values (NaN/inf)"),
    (["1.0", "1.0", "1.0"], "DMS_score is constant (1 for every mutant)"),
    (["1.0"], "1 mutant; a rank correlation needs at least 2"),
])
def test_an_undefined_spearman_is_null_with_its_reason_in_valid_json(hf_dir_a, tmp_path, capsys, scores, reason):
    """Before: ``"spearman": NaN`` (not JSON), exit 0."""
    dms = tmp_path / "dms.csv"
    dms.write_text("mutant,DMS_score\n" + "".join(f"{m},{s}\n" for m, s in zip(("M1A", "K2R", "T3S"), scores)))
    assert score.main([f"--model={hf_dir_a}", f"--mutations={dms}", f"--wildtype={SEQS[0]}",
                       f"--output={tmp_path / 'o.csv'}"]) == 0
    printed = capsys.readouterr().out.strip()
    summary = json.loads(printed.split(": ", 1)[1], parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert summary["spearman"] is None and summary["spearman_undefined"] == reason


def test_write_together_leaves_the_earlier_pair_when_a_writer_fails(tmp_path):
    from ankh_jax.storage import outputs

    a, b = tmp_path / "a.csv", tmp_path / "b.fasta"
    outputs.write_together([(str(a), lambda f: f.write("a1")), (str(b), lambda f: f.write("b1"))])
    assert (a.read_text(), b.read_text()) == ("a1", "b1")
    with pytest.raises(RuntimeError):
        outputs.write_together([(str(a), lambda f: f.write("a2")), (str(b), _fail)])
    assert (a.read_text(), b.read_text()) == ("a1", "b1") and sorted(os.listdir(tmp_path)) == ["a.csv", "b.fasta"]


def _fail(f):
    f.write("partial")
    raise RuntimeError("the writer failed half-way")


def _without_platform_choice() -> dict:
    return {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the TPU probe reads Linux's PCI bus")
def test_a_refused_command_prints_exactly_one_line(tmp_path, repo_root):
    """Before: libtpu and TensorFlow printed ~9 lines of start-up noise on a machine without a TPU (every command,
    since ``make install`` installs libtpu for plan_memory's TPU compile), and the one-line error was line 10."""
    from ankh_jax.startup import has_tpu

    if has_tpu():
        pytest.skip("a TPU machine: libtpu's start-up is not noise here")
    model_dir = tmp_path / "run"
    model_dir.write_text("a file")
    proc = subprocess.run([sys.executable, "-m", "ankh_jax.train", "--gin_file=configs/pretrain_tiny_cpu.gin",
                           f"--gin.MODEL_DIR='{model_dir}'"], cwd=repo_root, env=_without_platform_choice(),
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"python -m ankh_jax.train: error: MODEL_DIR {model_dir} is a file, not a directory"]
    proc = subprocess.run([sys.executable, "-m", "ankh_jax.score", f"--model={model_dir}", "--fasta=nowhere.fasta",
                           f"--output={tmp_path / 'o.csv'}"], cwd=repo_root, env=_without_platform_choice(),
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.splitlines() == ["score: error: nowhere.fasta: no such file"]


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="a GPU machine: TensorFlow finds its GPU quietly")
def test_tensorflow_says_nothing_at_its_first_device_query_without_a_gpu(repo_root):
    """Before: the data pipeline's first TensorFlow op printed 'E0000 ... cuda_platform.cc:52] failed call to cuInit'
    (TensorFlow looks for a GPU at its first device query, after the import that ankh_jax.startup quiets).
    TensorFlow's own log level is left at its default here, as a user's shell has it."""
    env = {k: v for k, v in _without_platform_choice().items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    script = ("import ankh_jax, tensorflow as tf; tf.config.set_visible_devices([], 'GPU'); "
              "print([int(x) for x in tf.data.Dataset.range(3).map(lambda x: x + 1).as_numpy_iterator()])")
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo_root, env=env, check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[1, 2, 3]", proc.stderr
    assert proc.stderr == "", proc.stderr
