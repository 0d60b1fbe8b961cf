"""seqio tasks for pretraining Ankh (importing this module registers them).

* ``uniref50_ankh``: splits ``train`` and ``validation`` of the pretraining dataset (UniRef50 unless gin says
  otherwise, below), tokenised, randomly cropped to the inputs length, corrupted with Ankh's 1-gram span masking
  (``ankh_jax.data.span_corruption``; knobs by gin: ``span_corruption.noise_density = 0.15`` ...), then ``</s>``
  appended. The name stays ``uniref50_ankh`` whatever the dataset (configs and checkpoints name it).
* ``uniref50_ankh_validation``: the same pipeline over the ``validation`` split only, for eval configs that name
  a task rather than a split.

Which data (resolved when the data is first read, so a gin binding applies even though this module registers the
tasks at import time), by :func:`pretraining_data`:

1. ``pretraining_data.dataset``: a config of the ``uniref`` TFDS builder (``ankh_jax.data.uniref``):
   ``'uniref50'`` (default), ``'uniref90'``, ``'uniref100'`` or ``'bfd'``.
2. ``pretraining_data.data_dir = "/path"`` (or ``gs://...``; the older spelling ``uniref50_data_dir.data_dir`` and
   ``set_data_dir`` still work): a tfds data dir holding ``<dataset>/1.0.0`` built by
   ``scripts/prepare_uniref50.py``. Missing -> an error naming the path and the command.
3. No data dir and UniRef50: the dataset built from the shipped sample (``ankh_jax.sample_data``: the checkout's
   ``data/sample_proteins.fasta``, 1,446 real proteins; 8 shards per split, 5% validation), built on first use
   under a file lock (concurrent processes wait for one build) and reused afterwards, in :func:`default_data_dir`:
   ``$ANKH_JAX_DATA_DIR``, else ``build/tfds`` of a checkout, else ``$ANKH_JAX_HOME/tfds`` (default
   ``~/.cache/ankh_jax/tfds``) for an installed ankh_jax, never inside the installed package.
"""

from __future__ import annotations

import functools
import os
from importlib import resources

import filelock
import gin
import seqio

from ankh_jax.data import span_corruption, uniref
from ankh_jax.data.tokenizer import seqio_vocabulary
from ankh_jax.errors import InputError

TASK = "uniref50_ankh"
VALIDATION_TASK = "uniref50_ankh_validation"
SAMPLE_DATA = os.fspath(resources.files("ankh_jax.sample_data"))  # the checkout's data/, installed or not
SAMPLE_FASTA = os.path.join(SAMPLE_DATA, "sample_proteins.fasta")
SAMPLE_NUM_SHARDS = 8
SAMPLE_VALIDATION_FRACTION = 0.05

_explicit_data_dir: str | None = None


def set_data_dir(data_dir: str | None) -> None:
    """Points the tasks at a built dataset (``None``: back to the default sample build)."""
    global _explicit_data_dir
    _explicit_data_dir = None if data_dir is None else os.fspath(data_dir)


def default_data_dir() -> str:
    """Where the sample dataset is built: ``$ANKH_JAX_DATA_DIR``; else ``<checkout>/build/tfds`` when the sample
    data is a checkout's ``data/`` (next to pyproject.toml: an editable install); else ``$ANKH_JAX_HOME/tfds``
    (default ``~/.cache/ankh_jax/tfds``), so an installed ankh_jax never writes into site-packages."""
    if os.environ.get("ANKH_JAX_DATA_DIR"):
        return os.environ["ANKH_JAX_DATA_DIR"]
    checkout = os.path.dirname(SAMPLE_DATA)
    if os.path.isfile(os.path.join(checkout, "pyproject.toml")):
        return os.path.join(checkout, "build", "tfds")
    from ankh_jax.storage.home import ankh_jax_home

    return os.path.join(ankh_jax_home(), "tfds")


def _is_built(data_dir: str, dataset: str = "uniref50") -> bool:
    from ankh_jax.storage.paths import (
        as_path,  # gs:// through the one path layer (TFDS then reads it with TF)
    )

    return (as_path(uniref.dataset_dir(data_dir, dataset)) / "dataset_info.json").exists()


def ensure_sample_dataset(data_dir: str) -> str:
    """Builds the shipped sample into ``data_dir`` unless already there (one builder at a time, by file lock)."""
    if _is_built(data_dir):
        return data_dir
    if not os.path.isfile(SAMPLE_FASTA):
        raise InputError(f"no UniRef50 dataset in {data_dir} and no shipped sample at {SAMPLE_FASTA} to build one "
                         "from; run scripts/prepare_uniref50.py and bind pretraining_data.data_dir")
    os.makedirs(data_dir, exist_ok=True)
    # One builder at a time across processes (the hosts of a local multi-process run build it together).
    with filelock.FileLock(os.path.join(data_dir, ".uniref50_sample.lock")):
        if not _is_built(data_dir):
            uniref.build(SAMPLE_FASTA, data_dir, num_shards=SAMPLE_NUM_SHARDS,
                         validation_fraction=SAMPLE_VALIDATION_FRACTION)
    return data_dir


@gin.configurable
def uniref50_data_dir(data_dir: str | None = None) -> str | None:
    """The older spelling of ``pretraining_data.data_dir`` (configs written before UniRef90/100 bind it)."""
    return data_dir


@gin.configurable
def pretraining_data(dataset: str = "uniref50", data_dir: str | None = None) -> tuple[str, str]:
    """``(dataset, tfds data dir)`` the tasks read (see the module docstring); builds the sample when defaulted."""
    uniref.check_config_name(dataset)
    chosen = data_dir or uniref50_data_dir() or _explicit_data_dir
    if chosen is None:
        if dataset != "uniref50":
            raise InputError(f"pretraining_data.dataset = {dataset!r} needs pretraining_data.data_dir: build it with "
                             f"`python scripts/prepare_uniref50.py --config={dataset} --fasta=... --output_dir=DIR`")
        return dataset, ensure_sample_dataset(default_data_dir())
    if not _is_built(chosen, dataset):
        raise InputError(
            f"no {dataset} dataset at {uniref.dataset_dir(chosen, dataset)} (missing dataset_info.json); build it "
            f"with `python scripts/prepare_uniref50.py --config={dataset} --fasta={dataset}.fasta.gz "
            f"--output_dir={chosen}`")
    return dataset, chosen


class PretrainingSource(seqio.TfdsDataSource):
    """``seqio.TfdsDataSource`` whose dataset and data dir are resolved on use (:func:`pretraining_data`), not at
    registration."""

    def __init__(self, splits=("train", "validation")):
        super().__init__(tfds_name=f"uniref/uniref50:{uniref.DATASET_VERSION}", splits=splits, read_only=True)
        self._loaders: dict[tuple[str, str], seqio.utils.LazyTfdsLoader] = {}

    @property
    def tfds_dataset(self):
        dataset, data_dir = pretraining_data()
        key = (dataset, data_dir)
        if key not in self._loaders:
            self._loaders[key] = seqio.utils.LazyTfdsLoader(
                f"uniref/{dataset}:{uniref.DATASET_VERSION}", data_dir=data_dir,
                split_map=self._tfds_dataset._split_map, read_only=True)
        return self._loaders[key]


def output_features() -> dict[str, seqio.Feature]:
    vocab = seqio_vocabulary()
    return {"inputs": seqio.Feature(vocab, add_eos=True, required=False),
            "targets": seqio.Feature(vocab, add_eos=True)}


PREPROCESSORS = (
    functools.partial(span_corruption.tokenize_residues, sequence_key="sequence", output_key="targets"),
    span_corruption.random_crop,
    span_corruption.span_corruption,
    seqio.preprocessors.append_eos_after_trim,
)


def _register(name: str, splits) -> None:
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(name, source=PretrainingSource(splits), preprocessors=list(PREPROCESSORS),
                           output_features=output_features(), metric_fns=[])


_register(TASK, ("train", "validation"))
_register(VALIDATION_TASK, {"validation": "validation"})
