"""Models and outputs on gs://: export_hf from gs:// to gs:// (committed with a marker that readers check), and
load_model / --model reading a bucket like a local directory."""

import json

import numpy as np
import pytest

from ankh_jax.errors import InputError
from ankh_jax.export_hf import main as export_main
from ankh_jax.io.loading import EXPORT_MARKER, load
from ankh_jax.storage import paths


def _same_params(a, b) -> None:
    import jax

    fa, fb = jax.tree_util.tree_leaves_with_path(a), dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(fa) == len(fb)
    for path, x in fa:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(fb[path]), err_msg=str(path))


def test_export_from_gs_to_gs_equals_the_local_model(random_encoder_dir, bucket, tmp_path, capsys):
    local = random_encoder_dir()
    first, second = f"{bucket}/export", f"{bucket}/export_again"
    assert export_main([f"--model={local}", f"--output={first}", "--encoder_only"]) == 0
    assert export_main([f"--model={first}", f"--output={second}", "--encoder_only"]) == 0  # gs:// to gs://
    marker = json.loads(paths.as_path(f"{second}/{EXPORT_MARKER}").read_text())
    assert marker["complete"] is True and "config.json" in marker["files"] and "model.safetensors" in marker["files"]
    _, want = load(local)
    _, got = load(second)
    _same_params(got, want)
    assert not (tmp_path / "gs:").exists()


def test_an_unfinished_export_on_gs_is_refused_by_readers(random_encoder_dir, bucket):
    out = f"{bucket}/export"
    assert export_main([f"--model={random_encoder_dir()}", f"--output={out}", "--encoder_only"]) == 0
    # What a kill half-way through a second export leaves: the marker says incomplete.
    paths.as_path(f"{out}/{EXPORT_MARKER}").write_text(json.dumps({"complete": False}))
    with pytest.raises(InputError, match="an export into it has not finished"):
        load(out)
    # The same export again completes it.
    assert export_main([f"--model={random_encoder_dir()}", f"--output={out}", "--encoder_only"]) == 0
    load(out)


def test_a_missing_bucket_or_model_is_one_line(gcs, capsys):
    assert export_main(["--model=gs://no-such-bucket-y/m", "--output=/tmp/unused_export_out"]) == 2
    assert "bucket gs://no-such-bucket-y does not exist" in capsys.readouterr().err


def test_fine_tuning_runs_in_a_bucket_and_a_rerun_elsewhere_finds_its_results(bucket, random_encoder_dir, tmp_path,
                                                                               monkeypatch, capsys):
    """MODEL_DIR=gs://...: the run works in a local copy and leaves its files in the bucket; the same command on
    another host (a fresh ANKH_JAX_HOME, another directory) finds the finished run there and trains nothing."""
    from ankh_jax.finetune import main as finetune_main

    flags = ["--gin_file=downstream/pfam_family.gin", f"--gin.MODEL_DIR='{bucket}/ft'",
             f"--gin.ENCODER='{random_encoder_dir()}'", "--gin.StoppingConfig.max_epochs=1", "--gin.run.progress=False"]
    for host in ("host_a", "host_b"):
        (tmp_path / host).mkdir()
        monkeypatch.chdir(tmp_path / host)
        monkeypatch.setenv("ANKH_JAX_HOME", str(tmp_path / host / "home"))
        assert finetune_main(flags) == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "already holds the results of this run; nothing to do" in out
    results = json.loads(paths.as_path(f"{bucket}/ft/results.json").read_text())
    assert "accuracy" in json.dumps(results["tests"])
    assert not paths.as_path(f"{bucket}/ft/.lock").exists()
    assert not (tmp_path / "host_a" / "gs:").exists() and not (tmp_path / "host_b" / "gs:").exists()


def test_embed_reads_a_gs_model_and_writes_gs_shards_equal_to_a_local_run(random_encoder_dir, bucket, tmp_path,
                                                                          sample_fasta):
    """The model and the output in the bucket, the output split over 2 shards (2 hosts): read back as one
    mapping, equal to a local run of the local model."""
    from ankh_jax.embed import main as embed_main
    from ankh_jax.io.embeddings_h5 import read_embeddings

    lines = sample_fasta.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(">")]
    fasta = tmp_path / "few.fasta"
    fasta.write_text("\n".join(lines[: starts[12]]) + "\n")  # the first 12 proteins
    model = f"{bucket}/model"
    assert export_main([f"--model={random_encoder_dir()}", f"--output={model}", "--encoder_only"]) == 0
    common = [f"--fasta={fasta}", "--pooling=mean", "--no_progress", "--compilation_cache_dir="]
    assert embed_main([f"--model={random_encoder_dir()}", f"--output={tmp_path / 'local.h5'}", *common]) == 0
    for shard in (0, 1):
        assert embed_main([f"--model={model}", f"--output={bucket}/out/emb.h5", "--num_shards=2",
                           f"--shard_index={shard}", *common]) == 0
    assert paths.as_path(f"{bucket}/out/emb-00001-of-00002.h5").exists()
    want, got = read_embeddings(str(tmp_path / "local.h5")), read_embeddings(f"{bucket}/out/emb.h5")
    assert sorted(got) == sorted(want) and len(want) == 12
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "gs:").exists()
