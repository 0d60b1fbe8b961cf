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


def test_fine_tuning_refuses_a_gs_run_directory_in_one_line(bucket, random_encoder_dir, tmp_path, monkeypatch,
                                                            capsys):
    """Fine-tuning's run directory stays local (reported, not faked); nothing is created, no local gs: folder."""
    from ankh_jax.finetune import main as finetune_main

    monkeypatch.chdir(tmp_path)
    code = finetune_main(["--gin_file=downstream/pfam_family.gin", f"--gin.MODEL_DIR='{bucket}/ft'",
                          f"--gin.ENCODER='{random_encoder_dir()}'"])
    err = capsys.readouterr().err
    assert code == 2 and "fine-tuning writes its run directory on a local disk only" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "gs:").exists() and not paths.as_path(f"{bucket}/ft").exists()
