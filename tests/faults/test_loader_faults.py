"""The model loader (ankh_jax training directories and HF imports) refuses damaged or poisoned weights, naming the
checkpoint and the tensor, instead of handing wrong numbers to embed / export_hf / finetune."""

import json
import os
import shutil
import struct

import jax
import numpy as np
import pytest
from fault_models import CFG, save_training_run

import ankh_jax
from ankh_jax import export_hf
from ankh_jax.io import checkpoints, hf_export, hf_files


def test_loader_refuses_params_that_do_not_match_their_fingerprint(tmp_path, params_a, params_b):
    """Bit-rot that still decodes: step 3's params bytes replaced by other valid arrays (step 5's)."""
    run = tmp_path / "run"
    save_training_run(run, {3: params_a, 5: params_b})
    ckpt = run / "checkpoints"
    shutil.rmtree(ckpt / "3" / "params")
    shutil.copytree(ckpt / "5" / "params", ckpt / "3" / "params")
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.load_params(str(run), step=3)
    msg = str(e.value)
    assert f"step 3 in {ckpt}" in msg and "item params leaf decoder/" in msg and "fingerprint" in msg
    assert "\n" not in msg
    checkpoints.load_params(str(run), step=5)  # the undamaged checkpoint still loads
    rc = export_hf.main([f"--model={run}", "--step=3", f"--output={tmp_path / 'out'}"])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_loader_names_the_checkpoint_when_its_bytes_are_unreadable(tmp_path, params_a):
    run = tmp_path / "run"
    save_training_run(run, {4: params_a})
    data = [os.path.join(root, f) for root, _, files in os.walk(run / "checkpoints" / "4" / "params")
            for f in files if os.sep + "d" + os.sep in os.path.join(root, f)]
    biggest = max(data, key=os.path.getsize)
    with open(biggest, "r+b") as f:  # 16 flipped bytes in the largest data file
        f.seek(os.path.getsize(biggest) // 2)
        chunk = f.read(16)
        f.seek(os.path.getsize(biggest) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.raises(checkpoints.CheckpointError, match=rf"step 4 in {run / 'checkpoints'}.*item params"):
        ankh_jax.load_model(run)


def test_loader_refuses_a_checkpoint_without_its_meta(tmp_path, params_a):
    run = tmp_path / "run"
    save_training_run(run, {2: params_a})
    os.remove(run / "checkpoints" / "2" / "meta" / "metadata")
    with pytest.raises(checkpoints.CheckpointError, match=r"step 2 .*item meta is unreadable"):
        checkpoints.load_params(str(run))


def test_undamaged_checkpoint_loads_bit_exact(tmp_path, params_a):
    run = tmp_path / "run"
    save_training_run(run, {1: params_a})
    _, loaded = checkpoints.load_params(str(run))
    np.testing.assert_array_equal(np.asarray(loaded["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]),
                                  params_a["encoder"]["layers_1"]["mlp"]["wo"]["kernel"])


def _copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("fmt", ["safetensors", "torch_bin", "ankh_jax"])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, params_a, capsys, fmt):
    poisoned = jax.tree_util.tree_map(np.array, params_a)
    poisoned["encoder"]["layers_1"]["mlp"]["wo"]["kernel"][3, 5] = np.nan
    poisoned["encoder"]["layers_1"]["mlp"]["wo"]["kernel"][4, 1] = np.inf
    model = tmp_path / "model"
    if fmt == "ankh_jax":
        save_training_run(model, {1: poisoned})
        tensor = "encoder/layers_1/mlp/wo/kernel"
    else:
        hf_export.export(CFG, poisoned, str(model))
        tensor = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
        if fmt == "torch_bin":
            torch = pytest.importorskip("torch")
            from safetensors.numpy import load_file

            state = load_file(str(model / hf_files.SAFETENSORS_FILE))
            torch.save({k: torch.from_numpy(v) for k, v in state.items()}, model / hf_files.TORCH_FILE)
            os.remove(model / hf_files.SAFETENSORS_FILE)
    with pytest.raises((hf_files.CheckpointError, checkpoints.CheckpointError), match=rf"{tensor} holds 2 non-finite"):
        ankh_jax.load_model(model)
    out = tmp_path / "out"
    _one_line_error(capsys, export_hf.main([f"--model={model}", f"--output={out}"]), tensor, "non-finite")
    assert not out.exists()


def _rewrite_safetensors_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_safetensors_offsets_that_do_not_fit_the_shape_name_the_file(tmp_path, hf_dir_a, capsys):
    """safetensors' own reader checks the header; its reason names no tensor, the error names the file."""
    model = _copy_dir(hf_dir_a, tmp_path / "model")
    name = "encoder.final_layer_norm.weight"

    def shrink(header):
        start, _ = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start, start + 4]  # one float for a [32] vector

    _rewrite_safetensors_header(model / hf_files.SAFETENSORS_FILE, shrink)
    path = model / hf_files.SAFETENSORS_FILE
    with pytest.raises(hf_files.CheckpointError, match=rf"{path}: not a readable safetensors file \(.*offset"):
        ankh_jax.load_model(model)
    out = tmp_path / "out"
    _one_line_error(capsys, export_hf.main([f"--model={model}", f"--output={out}"]), str(path), "offset")
    assert not out.exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_in_one_line(tmp_path, hf_dir_a, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(hf_dir_a / hf_files.CONFIG_FILE, model / hf_files.CONFIG_FILE)
    torch.save({"shared.weight": _Payload()}, model / hf_files.TORCH_FILE)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _one_line_error(capsys, export_hf.main([f"--model={model}", f"--output={out}"]), str(model / hf_files.TORCH_FILE),
                    "weights-only")
    assert not (tmp_path / "pwned").exists() and not out.exists()


def test_a_model_path_that_is_a_file_or_a_garbled_header_is_a_clear_error(tmp_path, hf_dir_a):
    (tmp_path / "model.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=r"model\.txt: is a file, not a model directory"):
        ankh_jax.load_model(tmp_path / "model.txt")
    model = _copy_dir(hf_dir_a, tmp_path / "model")
    raw = json.dumps(["not", "a", "table"]).encode()
    (model / hf_files.SAFETENSORS_FILE).write_bytes(struct.pack("<Q", len(raw)) + raw)
    header = model / hf_files.SAFETENSORS_FILE
    with pytest.raises(hf_files.CheckpointError, match=rf"{header}: not a readable safetensors file \(.*header"):
        ankh_jax.load_model(model)
