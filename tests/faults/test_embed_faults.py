"""python -m ankh_jax.embed: an output never mixes two models, survives a kill at any moment (the re-run completes
with every id once and the values of an uninterrupted run), and bad input is one line on stderr, exit 2, naming
the file, with nothing created and an existing output untouched."""

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from fault_models import CFG, save_training_run

from ankh_jax import embed
from ankh_jax.data.fasta import load_fasta, write_fasta
from ankh_jax.inference import embedding
from ankh_jax.io import embeddings_h5, hf_export
from ankh_jax.storage.lock import DirectoryLock

# Padding and batch composition change float32 rounding only: a resumed run batches differently.
REL_TOL = 1e-5
FLAGS = ["--no_progress", "--compilation_cache_dir=", "--batch_tokens=256"]


@pytest.fixture(scope="module")
def records(sample_fasta):
    """30 real proteins of 20..150 residues: six length buckets, so a run lasts a few compiles."""
    recs = sorted((r for r in load_fasta(sample_fasta) if 20 <= len(r.sequence) <= 150), key=lambda r: r.line)
    return recs[:: max(1, len(recs) // 30)][:30]


@pytest.fixture(scope="module")
def expected(records, params_a):
    seqs = [r.sequence for r in records]
    return dict(zip((r.id for r in records), embedding.embed_sequences(CFG, params_a, seqs, batch_tokens=256)))


def assert_complete(out, records, expected):
    with h5py.File(out, "r") as f:
        ids = [ds.attrs["id"] for ds in f.values()]
    assert sorted(ids) == sorted(r.id for r in records)  # every id exactly once
    got = embeddings_h5.read_embeddings(str(out))
    for rid, ref in expected.items():
        assert got[rid].shape == ref.shape
        assert np.abs(got[rid] - ref).max() <= REL_TOL * np.abs(ref).max(), rid
    assert not os.path.exists(str(out) + ".partial")


def run_embed(model, fasta, out, *extra):
    return embed.main([f"--model={model}", f"--fasta={fasta}", f"--output={out}", *FLAGS, *extra])


def test_resume_only_with_the_same_model(tmp_path, records, expected, hf_dir_a, params_a, params_b, capsys):
    thirds = [records[:10], records[:20], records]
    fasta = [tmp_path / f"in{i}.fasta" for i in range(3)]
    for path, recs in zip(fasta, thirds):
        write_fasta(path, recs)
    model = shutil.copytree(hf_dir_a, tmp_path / "model")
    out = tmp_path / "out.h5"
    assert run_embed(model, fasta[0], out) == 0
    first = out.read_bytes()

    hf_export.export(CFG, params_b, str(model))  # the directory replaced in place by another model
    assert run_embed(model, fasta[2], out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "different model" in err, err
    assert out.read_bytes() == first and not os.path.exists(str(out) + ".partial")
    assert run_embed(model, fasta[2], out, "--dtype=bfloat16") == 2  # other settings: refused as well
    assert "dtype=float32, this run has dtype=bfloat16" in capsys.readouterr().err
    assert out.read_bytes() == first

    link = tmp_path / "link"
    link.symlink_to(hf_dir_a)  # another path to the same weights: resumes
    assert run_embed(link, fasta[1], out) == 0
    run_dir = tmp_path / "run"
    save_training_run(run_dir, {1: params_a})  # the same weights as an ankh_jax checkpoint: resumes too
    assert run_embed(run_dir, fasta[2], out) == 0
    assert_complete(out, records, expected)
    with h5py.File(out, "r") as f:
        assert f.attrs["fingerprint"].startswith("sha256:") and f.attrs["pooling"] == "none"


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the embedding run never reached the moment to kill it"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", ["during_start", "before_first_flush", "mid_run", "sigterm_mid_run"])
def test_a_killed_run_is_completed_by_the_rerun(tmp_path, records, expected, hf_dir_a, moment):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, records)
    out = tmp_path / "out.h5"
    partial = tmp_path / "out.h5.partial"
    flush = "--flush_seconds=1000" if moment == "before_first_flush" else "--flush_seconds=0"
    argv = [f"--model={hf_dir_a}", f"--fasta={fasta}", f"--output={out}", *FLAGS, flush]
    proc = subprocess.Popen([sys.executable, "-m", "ankh_jax.embed", *argv], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        if moment == "during_start":
            time.sleep(0.5)
        elif moment == "before_first_flush":
            _wait_for(lambda: (partial / "settings.json").exists(), proc)
        else:
            _wait_for(lambda: any(p.endswith(".h5") for p in os.listdir(partial)) if partial.exists() else False,
                      proc)
        proc.send_signal(signal.SIGTERM if moment.startswith("sigterm") else signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode != 0 and not out.exists()  # killed before the output was assembled
    if moment == "before_first_flush":
        assert not [p for p in os.listdir(partial) if p.startswith("part-")]
    if moment.endswith("mid_run"):
        assert any(p.startswith("part-") for p in os.listdir(partial))
    assert run_embed(hf_dir_a, fasta, out, flush) == 0
    assert_complete(out, records, expected)


def test_a_kill_between_assembly_and_cleanup_adds_nothing_twice(tmp_path, records, expected, hf_dir_a,
                                                                monkeypatch):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, records)
    out = tmp_path / "out.h5"
    real_rmtree = shutil.rmtree

    def die(path, *a, **k):  # the process "dies" right after swapping the assembled output in
        raise KeyboardInterrupt

    monkeypatch.setattr("ankh_jax.io.embeddings_h5.shutil.rmtree", die)
    with pytest.raises(KeyboardInterrupt):
        run_embed(hf_dir_a, fasta, out, "--flush_seconds=0")
    monkeypatch.setattr("ankh_jax.io.embeddings_h5.shutil.rmtree", real_rmtree)
    assert out.exists() and (tmp_path / "out.h5.partial").is_dir()
    assert run_embed(hf_dir_a, fasta, out) == 0
    assert_complete(out, records, expected)


def test_a_killed_run_is_not_resumed_with_another_model(tmp_path, records, hf_dir_a, params_b, capsys,
                                                         monkeypatch):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, records[:12])
    out = tmp_path / "out.h5"
    def die(self):  # the process "dies" after its last part, before assembling the output
        raise KeyboardInterrupt

    monkeypatch.setattr("ankh_jax.io.embeddings_h5.OutputWriter.finish", die)
    with pytest.raises(KeyboardInterrupt):
        run_embed(hf_dir_a, fasta, out, "--flush_seconds=0")
    monkeypatch.undo()
    partial = tmp_path / "out.h5.partial"
    parts = {p: (partial / p).read_bytes() for p in os.listdir(partial) if p.startswith("part-")}
    assert parts and not out.exists()
    model_b = tmp_path / "model_b"
    hf_export.export(CFG, params_b, str(model_b))
    assert run_embed(model_b, fasta, out) == 2
    err = capsys.readouterr().err
    assert str(partial) in err and "different model" in err, err
    assert {p: (partial / p).read_bytes() for p in os.listdir(partial) if p.startswith("part-")} == parts


def _make_inputs(tmp_path):
    good = tmp_path / "good.fasta"
    good.write_text(">a\nMKVLA\n>b\nGSWWC\n")
    cases = {
        "binary.fasta": b">a\nMKV\x00\x01\x02\n",
        "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "latin1.fasta": ">a\nMKV\n>b caf\xe9\nGS\n".encode("latin-1"),
        "utf16.fasta": ">a\nMKV\n".encode("utf-16"),
        "truncated.fasta.gz": gzip.compress(b">a\nMKVLA\n" * 200)[:60],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a_directory.fasta").mkdir()
    return good


@pytest.mark.parametrize("case", ["binary.fasta", "image.png", "latin1.fasta", "utf16.fasta", "truncated.fasta.gz",
                                  "a_directory.fasta", "max_length", "batch_tokens", "model_typo"])
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, hf_dir_a, capsys, case):
    good = _make_inputs(tmp_path)
    fasta, model, extra, named = tmp_path / case, hf_dir_a, [], str(tmp_path / case)
    if case == "max_length":
        fasta, extra, named = good, ["--max_length=1"], "--max_length=1"
    elif case == "batch_tokens":
        fasta, extra, named = good, ["--batch_tokens=0"], "--batch_tokens=0"
    elif case == "model_typo":
        fasta, model, named = good, tmp_path / "modle", str(tmp_path / "modle")
    out = tmp_path / "out" / "emb.h5"
    before = sorted(os.listdir(tmp_path))
    rc = run_embed(model, fasta, out, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("embed: error: ") and named in err, err
    assert sorted(os.listdir(tmp_path)) == before  # no output, no sidecar, no metrics, not even the folder
    assert run_embed(hf_dir_a, good, out) == 0  # and the corrected run is not blocked by anything


@pytest.mark.parametrize("kind", ["directory", "foreign_hdf5", "not_hdf5", "unfingerprinted_hdf5"])
def test_an_output_that_is_not_ours_is_refused_untouched(tmp_path, hf_dir_a, capsys, kind):
    good = _make_inputs(tmp_path)
    out = tmp_path / "out.h5"
    if kind == "directory":
        out.mkdir()
    elif kind == "foreign_hdf5":
        with h5py.File(out, "w") as f:
            f.create_dataset("mine", data=np.arange(3.0))
            f.attrs["owner"] = "someone else"
    elif kind == "unfingerprinted_hdf5":  # written by ankh_jax.inference.embedding before outputs recorded their model
        with h5py.File(out, "w") as f:
            f.attrs.update({"format_version": 1, "pooling": "none", "dtype": "float32", "max_length": -1})
    else:
        out.write_text("not hdf5")
    before = sorted(os.listdir(tmp_path))
    snapshot = None if kind == "directory" else out.read_bytes()
    assert run_embed(hf_dir_a, good, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err, err
    assert sorted(os.listdir(tmp_path)) == before
    if snapshot is not None:
        assert out.read_bytes() == snapshot


def test_ids_hdf5_cannot_name_and_a_bom_are_stored(tmp_path, hf_dir_a, params_a):
    fasta = tmp_path / "bom.fasta"
    fasta.write_bytes(b"\xef\xbb\xbf>.\nMKVLA\n>a/b\nGSWWC\n>%2E\nWYC\n")
    out = tmp_path / "out.h5"
    assert run_embed(hf_dir_a, fasta, out) == 0
    got = embeddings_h5.read_embeddings(str(out))
    assert sorted(got) == ["%2E", ".", "a/b"]
    ref = embedding.embed_sequences(CFG, params_a, ["MKVLA", "WYC"])
    np.testing.assert_allclose(got["."], ref[0], rtol=0, atol=REL_TOL * np.abs(ref[0]).max())
    np.testing.assert_allclose(got["%2E"], ref[1], rtol=0, atol=REL_TOL * np.abs(ref[1]).max())


def test_ids_are_first_words_with_the_header_as_original_id_and_step_picks_the_checkpoint(tmp_path, params_a,
                                                                                          params_b, hf_dir_a):
    """bio_embeddings' convention: keyed by Biopython's record.id, the whole header in ``original_id``; and
    ``--step`` embeds that checkpoint of a training directory (an HF directory has none: exit 2)."""
    fasta = tmp_path / "h.fasta"
    fasta.write_text(">sp|P1|A_HUMAN\tProtein A OS=Homo sapiens\nMKVLA\n>P2 second one\nGSWWC\n")
    run_dir = tmp_path / "run"
    save_training_run(run_dir, {3: params_a, 5: params_b})
    out = tmp_path / "out.h5"
    assert run_embed(run_dir, fasta, out, "--step=3") == 0
    with h5py.File(out, "r") as f:
        attrs = {ds.attrs["id"]: ds.attrs["original_id"] for ds in f.values()}
    assert attrs == {"sp|P1|A_HUMAN": "sp|P1|A_HUMAN\tProtein A OS=Homo sapiens", "P2": "P2 second one"}
    got = embeddings_h5.read_embeddings(str(out))
    for rid, ref in zip(("sp|P1|A_HUMAN", "P2"), embedding.embed_sequences(CFG, params_a, ["MKVLA", "GSWWC"])):
        np.testing.assert_allclose(got[rid], ref, rtol=0, atol=REL_TOL * np.abs(ref).max())
    assert run_embed(hf_dir_a, fasta, tmp_path / "hf.h5", "--step=3") == 2


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, hf_dir_a, capsys):
    good = _make_inputs(tmp_path)
    out = tmp_path / "out.h5"
    with DirectoryLock(str(out) + ".partial", "embedding"):
        assert run_embed(hf_dir_a, good, out) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and err.count("\n") == 1, err
    assert not out.exists()
