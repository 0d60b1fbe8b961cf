"""Shared fixtures of the data-pipeline tests: one TFDS build of the shipped sample per test session."""

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
