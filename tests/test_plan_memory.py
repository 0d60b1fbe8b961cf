"""The paper configs parse and their train step compiles ahead of time (at a reduced depth) on a fake mesh, and
the trainer's own step compiles for a real TPU topology through XLA:TPU when libtpu is installed."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from ankh_jax import flags, plan_memory
from ankh_jax.train import GIN_MODULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REDUCED = ["--gin.T5Config.num_encoder_layers=2", "--gin.T5Config.num_decoder_layers=1", "--gin.INPUTS_LENGTH=64",
           "--batch=16"]


@pytest.mark.parametrize("config,params", [("pretrain_ankh_base.gin", 736_453_632),
                                           ("pretrain_ankh_large.gin", 1_878_705_152)])
def test_paper_configs_parse_and_their_train_step_compiles(config, params, tmp_path, capsys):
    """The full configs are read as the trainer reads them (scan, remat, bf16, FSDP mesh); the compile uses 2+1
    layers so it takes seconds. The full model's size is checked from the same gin parse."""
    import copy

    import gin

    out = tmp_path / "plan.json"
    code = plan_memory.main([f"--gin_file=configs/{config}", "--target=cpu:8", "--hbm_gib=32", f"--json={out}",
                             *REDUCED])
    assert code == 0, capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "model": 1}  # (1, -1, 1): FSDP
    run = report["runs"][0]
    assert run["batch"] == 16 and 0 < report["state_bytes"] < run["peak"]
    # The state is sharded 8 ways: per device it is about 1/8 of the reduced model's params + Adafactor state.
    assert report["state_bytes"] < 4 * report["params"] / 8 * 1.5
    plan_memory.parse_args([f"--gin_file=configs/{config}"])
    flags.parse_gin([f"configs/{config}"], ["MODEL_DIR = '/unused'"], modules=GIN_MODULES)
    full = copy.deepcopy(gin.query_parameter("ProgramConfig.model_config"))
    assert full.num_params() == params and full.scan_layers and full.remat_policy == "full"
    gin.clear_config()


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install '.[tpu]')")
def test_the_trainer_step_compiles_for_a_tpu_v4_topology(tmp_path):
    out = tmp_path / "plan.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "ankh_jax.plan_memory", "--gin_file=configs/pretrain_tiny_cpu.gin",
                           "--target=tpu:v4:2x2x1", "--gin.INPUTS_LENGTH=64", "--batch=8", f"--json={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    # 2x2x1 is 4 chips; a v4 chip is one jax device (megacore).
    assert report["devices"] == 4 and report["device_kind"] == "TPU v4"
    assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
    assert 0 < report["state_bytes"] < report["runs"][0]["peak"]
