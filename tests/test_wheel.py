"""A built wheel works from any directory: installed into a fresh venv, run from a temporary directory.

The wheel is built from a copy of the packaging inputs (pyproject.toml, README.md, ankh_jax/, configs/, tasks/,
data/): an in-tree build would write build/ and *.egg-info into the checkout, and a stale build/lib can put
deleted modules into the wheel. The fresh venv gets the wheel with ``--no-deps`` and sees the dependencies through
a .pth file listing this interpreter's site-packages: plain path lines in a .pth are added to sys.path, but .pth
files inside those folders are not processed, so the editable ankh_jax of a dev install stays inactive (checked:
``ankh_jax`` imports from the fresh venv). Then, from a directory that is not the checkout: 5 training steps of
``pretrain_tiny_cpu.gin`` (named without configs/: found among the installed configs; the sample TFDS dataset is
built from the shipped FASTA under $ANKH_JAX_HOME, not in site-packages), an HF export, and embeddings of the
shipped sample FASTA.
"""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import h5py
import numpy as np
import pytest

from ankh_jax.model import T5Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGING_INPUTS = ("pyproject.toml", "README.md", "ankh_jax", "configs", "tasks", "data")
SAMPLE_FILES = ("sample_proteins.fasta", "pfam_family_train.csv", "pfam_family_valid.csv", "pfam_family_test.csv",
                "README.md")
NUM_SAMPLE_PROTEINS = 1446
TRAIN_FLAGS = [
    "--gin_file=pretrain_tiny_cpu.gin", "--gin.MODEL_DIR='run'",
    "--gin.INPUTS_LENGTH=64", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=5", "--gin.WARMUP_STEPS=2",
    "--gin.LoopConfig.log_every_steps=1", "--gin.CheckpointConfig.every_steps=5", "--gin.EvalConfig.every_steps=5",
    "--gin.EvalConfig.steps=1", "--gin.LoopConfig.progress_bar=False", "--gin.make_input.shuffle_buffer_size=64",
]


def _copy_packaging_inputs(dest: str) -> None:
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in PACKAGING_INPUTS:
        source = os.path.join(REPO, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(dest, name), ignore=ignore)
        else:
            shutil.copy2(source, os.path.join(dest, name))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    source = tmp_path_factory.mktemp("source")
    _copy_packaging_inputs(str(source))
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(dist), str(source)], check=False, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (built,) = [f for f in os.listdir(dist) if f.endswith(".whl")]
    return str(dist / built)


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> dict:
    """A fresh venv holding only the wheel; the dependencies come from this interpreter's site-packages."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()
    with open(os.path.join(site, "dev_dependencies.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys([ours["purelib"], ours["platlib"]])) + "\n")
    # pip itself comes from the dependencies' site-packages; it installs into the fresh venv's prefix.
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], check=True)
    work = tmp_path_factory.mktemp("elsewhere")  # the commands run here: not the checkout, no configs/ or data/
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ANKH_JAX_DATA_DIR", "XLA_FLAGS", "PYTHONSTARTUP")}
    env.update(ANKH_JAX_HOME=str(tmp_path_factory.mktemp("home")), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONNOUSERSITE="1")
    return {"python": python, "site": site, "work": str(work), "env": env}


def _run(venv: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([venv["python"], *args], check=False, cwd=venv["work"], env=venv["env"],
                          capture_output=True, text=True, timeout=timeout)


def _installed_files(venv: dict) -> set[str]:
    package = os.path.join(venv["site"], "ankh_jax")
    return {os.path.relpath(os.path.join(d, f), venv["site"]) for d, dirs, files in os.walk(package)
            for f in files if "__pycache__" not in d}


def test_wheel_ships_every_config_and_sample_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = os.path.join(REPO, "configs")
    gin_files = {os.path.relpath(os.path.join(d, f), configs) for d, _, files in os.walk(configs)
                 for f in files if f.endswith(".gin")}
    assert {"models/ankh_base.gin", "models/ankh_large.gin", "models/ankh_tiny.gin"} <= gin_files
    assert {f"ankh_jax/configs/{g}" for g in gin_files} <= names
    assert {f"ankh_jax/sample_data/{f}" for f in SAMPLE_FILES} <= names
    assert "ankh_jax/data/assets/ankh_vocab.model" in names
    tasks = {f for f in os.listdir(os.path.join(REPO, "tasks")) if f.endswith(".py")}
    assert {f"ankh_jax/tasks/{f}" for f in tasks} <= names
    assert all(n.split("/")[0] == "ankh_jax" or n.split("/")[0].endswith(".dist-info") for n in names)


def test_the_fresh_venv_imports_the_installed_wheel(venv):
    probe = _run(venv, "-c", "import ankh_jax, ankh_jax.configs, ankh_jax.tasks, ankh_jax.sample_data as s; "
                             "print(ankh_jax.__file__, ankh_jax.configs.__file__, ankh_jax.tasks.__file__, s.__file__)")
    assert probe.returncode == 0, probe.stderr
    files = probe.stdout.split()
    assert len(files) == 4 and all(f.startswith(venv["site"] + os.sep) for f in files), files


@pytest.fixture(scope="module")
def trained(venv) -> str:
    before = _installed_files(venv)
    proc = _run(venv, "-m", "ankh_jax.train", *TRAIN_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _installed_files(venv) == before  # nothing written into site-packages (caches are elsewhere)
    return os.path.join(venv["work"], "run")


def test_training_from_anywhere_with_the_installed_configs(venv, trained):
    assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["5"]
    with open(os.path.join(trained, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert sorted(r["step"] for r in rows if r["kind"] == "train") == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [5]
    assert all(np.isfinite(r["loss"]) for r in rows)
    with open(os.path.join(trained, "model_config.json")) as f:
        assert T5Config.from_dict(json.load(f)) == T5Config.tiny()
    built = os.path.join(venv["env"]["ANKH_JAX_HOME"], "tfds", "uniref50", "1.0.0", "dataset_info.json")
    assert os.path.isfile(built)  # the shipped sample, built under $ANKH_JAX_HOME


@pytest.fixture(scope="module")
def exported(venv, trained) -> str:
    proc = _run(venv, "-m", "ankh_jax.export_hf", "--model=run", "--output=hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return os.path.join(venv["work"], "hf")


def test_export_and_embed_the_shipped_fasta(venv, exported):
    with open(os.path.join(exported, "config.json")) as f:
        assert json.load(f)["d_model"] == T5Config.tiny().d_model
    assert os.path.isfile(os.path.join(exported, "model.safetensors"))
    fasta = _run(venv, "-c", "from importlib import resources; "
                             "print(resources.files('ankh_jax.sample_data') / 'sample_proteins.fasta')")
    assert fasta.returncode == 0 and fasta.stdout.strip().startswith(venv["site"] + os.sep), fasta
    proc = _run(venv, "-m", "ankh_jax.embed", "--model=hf", f"--fasta={fasta.stdout.strip()}",
                "--output=embeddings.h5", "--pooling=mean", "--max_length=64", "--no_progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(os.path.join(venv["work"], "embeddings.h5"), "r") as h5:
        assert len(h5) == NUM_SAMPLE_PROTEINS
        vectors = np.stack([h5[name][()] for name in h5])
    assert vectors.shape == (NUM_SAMPLE_PROTEINS, T5Config.tiny().d_model) and np.isfinite(vectors).all()
