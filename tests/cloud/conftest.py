"""A local GCS for the cloud tests: fake-gcs-server (``ankh_jax.storage.emulator``), one per test process, named to
clients only through ``STORAGE_EMULATOR_HOST``; each test gets a bucket of its own."""

import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "multihost"))

_names = itertools.count()


@pytest.fixture(scope="session")
def gcs():
    from ankh_jax.storage.emulator import GcsEmulator

    with GcsEmulator() as emulator:
        yield emulator


@pytest.fixture
def bucket(gcs) -> str:
    """``gs://NAME`` of a new, empty bucket."""
    return gcs.create_bucket(f"ankh-jax-test-{os.getpid()}-{next(_names)}")
