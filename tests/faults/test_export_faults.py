"""export_hf: an export leaves exactly its own files (never an older model's weights beside the new ones), refuses
to replace what is not an earlier export, and a failure mid-export leaves the earlier export intact."""

import os

import jax
import numpy as np
import pytest
from fault_models import CFG, save_training_run

import ankh_jax
from ankh_jax import export_hf
from ankh_jax.io import hf_export, hf_files


def _files(d):
    return sorted(os.listdir(d))


def test_sharded_export_over_a_single_file_export_leaves_only_the_new_files(tmp_path, params_a, params_b):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "exported"
    hf_export.export(CFG, params_a, str(out))
    assert (out / hf_files.SAFETENSORS_FILE).exists()
    written = hf_export.export(CFG, params_b, str(out), max_shard_bytes=20_000)
    assert _files(out) == sorted(os.path.basename(p) for p in written)  # exactly its own files
    assert not (out / hf_files.SAFETENSORS_FILE).exists() and (out / hf_files.SAFETENSORS_INDEX).exists()
    assert len([f for f in _files(out) if f.endswith(".safetensors")]) > 1
    assert [f for f in _files(tmp_path) if f != "exported"] == []  # no staging directory left behind

    _, loaded = hf_files.load_hf_model(str(out))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_b, loaded)  # the NEW weights
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(out))
    np.testing.assert_array_equal(model.shared.weight.detach().numpy(), params_b["token_embedder"]["embedding"])


def test_export_refuses_what_is_not_an_earlier_export_and_leaves_it_untouched(tmp_path, hf_dir_a, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("months of work")
    as_file = tmp_path / "file.txt"
    as_file.write_text("a file")
    run = tmp_path / "run"
    save_training_run(run, {1: ankh_jax.load_model(hf_dir_a).params})
    run_files = sorted(str(p) for p in run.rglob("*"))
    for target in (foreign, as_file, run):
        rc = export_hf.main([f"--model={hf_dir_a}", f"--output={target}"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and str(target) in err, err
    assert _files(foreign) == ["thesis.tex"] and (foreign / "thesis.tex").read_text() == "months of work"
    assert as_file.read_text() == "a file"
    assert sorted(str(p) for p in run.rglob("*")) == run_files
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "notes", "run"]


def test_a_failure_mid_export_keeps_the_earlier_export(tmp_path, params_a, params_b, monkeypatch):
    out = tmp_path / "exported"
    hf_export.export(CFG, params_a, str(out))
    before = {f: (out / f).read_bytes() for f in _files(out)}

    save_weights = hf_files.save_hf_weights

    def fail_after_weights(*args, **kwargs):
        save_weights(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(hf_export.hf_files, "save_hf_weights", fail_after_weights)
    with pytest.raises(OSError, match="disk full"):
        hf_export.export(CFG, params_b, str(out), max_shard_bytes=20_000)
    monkeypatch.undo()
    assert {f: (out / f).read_bytes() for f in _files(out)} == before
    assert _files(tmp_path) == ["exported"]


@pytest.mark.parametrize("case", ["model_typo", "max_shard_size_gb"])
def test_bad_flags_are_one_line_and_create_nothing(tmp_path, hf_dir_a, capsys, case):
    model, extra, named = hf_dir_a, [], "--max_shard_size_gb=0"
    if case == "model_typo":
        model = named = str(tmp_path / "modle")
    else:
        extra = [named]
    rc = export_hf.main([f"--model={model}", f"--output={tmp_path / 'out'}", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and named in err, err
    assert os.listdir(tmp_path) == []
