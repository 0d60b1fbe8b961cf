"""Test-wide setup: eight fake CPU devices stand in for a pod slice.

XLA reads the flag once, when jax first initialises its backend, so it must be set before any test imports jax.
Tests that need a single device use ``jax.devices()[:1]``; sharding tests build meshes over all eight.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def sample_fasta() -> pathlib.Path:
    """1,446 real Swiss-Prot/Pfam proteins shipped in data/ (see data/README.md)."""
    return DATA / "sample_proteins.fasta"
