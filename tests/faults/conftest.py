"""Fixtures of the fault tests: two tiny random models (a and b) and model a exported to HF."""

import pytest
from fault_models import CFG, random_params

from ankh_jax.io import hf_export


@pytest.fixture(scope="session")
def params_a():
    return random_params(1)


@pytest.fixture(scope="session")
def params_b():
    return random_params(2)


@pytest.fixture(scope="session")
def hf_dir_a(params_a, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_a")
    hf_export.export(CFG, params_a, str(out))
    return out
