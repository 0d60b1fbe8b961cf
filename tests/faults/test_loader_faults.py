"""The model loader (ankh_jax training directories and HF imports) refuses damaged or poisoned weights, naming the
checkpoint and the tensor, instead of handing wrong numbers to embed / export_hf / finetune."""

import os
import shutil

import numpy as np
import pytest
from fault_models import save_training_run

import ankh_jax
from ankh_jax import checkpoints, export_hf


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
