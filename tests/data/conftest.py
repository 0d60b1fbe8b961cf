"""Shared fixtures of the data-pipeline tests: one TFDS build of the shipped sample per test session, and the
UniRef50 preparation script as a module."""

import importlib.util

import pytest


@pytest.fixture(scope="session")
def sample_tfds_dir(tmp_path_factory):
    """The shipped sample built the way ``tasks/pretraining.py`` builds its default (8 shards, 5% validation),
    in a temporary dir the tasks are pointed at."""
    from ankh_jax.tasks import pretraining

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pretraining.ensure_sample_dataset(data_dir)
    pretraining.set_data_dir(data_dir)
    yield data_dir
    pretraining.set_data_dir(None)


@pytest.fixture(scope="module")
def prepare(repo_root):
    """``scripts/prepare_uniref50.py`` as a module (scripts/ is not a package), so a test calls its ``main``."""
    spec = importlib.util.spec_from_file_location("prepare_uniref50", repo_root / "scripts" / "prepare_uniref50.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
