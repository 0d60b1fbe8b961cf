"""Reading and writing models and outputs: orbax checkpoints, HuggingFace directories, HDF5 embeddings."""

from ankh_jax.errors import InputError


class CheckpointError(InputError):
    """A checkpoint or model directory that cannot be used as asked (missing, unreadable, non-finite, or written by
    another model): bad input, reported in one line."""
