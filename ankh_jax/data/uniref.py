"""UniRef50, UniRef90, UniRef100 and BFD as ONE TensorFlow Datasets builder, built the way t5x users get C4.

``tfds.builder("uniref/uniref90", data_dir=D)``: one builder ``uniref`` with a config per dataset (:data:`CONFIGS`:
``uniref50``, ``uniref90``, ``uniref100``, ``bfd``), all version 1.0.0 with the same features (``id``, ``sequence``,
text), cleaning, length filters, validation rule and statistics (``ankh_jax.data.uniref_records``). Each config's
data lives in ``D/<config>/<version>`` with shards named ``<config>-<split>.tfrecord-*``: the layout the
single-dataset ``uniref50`` builder always wrote, so data built before the configs existed is read unchanged, and
``tfds.builder("uniref50", data_dir=D)`` (the old name, kept as the alias :class:`Uniref50`) reads the same files.

The FASTA files (``uniref90.fasta.gz`` from UniProt, a BFD FASTA, ...) are the *manual download*: tfds never
fetches them. :func:`build` (command line: ``scripts/prepare_uniref50.py``) takes paths or globs, local or
``gs://``, checks them before any work (``ankh_jax.data.uniref_inputs``), then builds

* in one process (the default): the input is read ONCE (``uniref_records.SinglePass``), records streamed in
  constant memory (tfds spills its write-shuffle buffer to disk past 1 GB);
* on Apache Beam with ``beam_runner=`` (``DirectRunner`` here, ``DataflowRunner`` in the cloud) plus any Beam
  pipeline options: files are read in parallel, once (``ankh_jax.data.uniref_beam``; imports Beam).

Both ways give the same ids in the same splits and the same statistics. Each split is written as ``num_shards``
TFRecord files, so each host of a pod slice reads its own files through ``seqio.TfdsDataSource``. tfds records the
version, splits, shard lengths and features (``dataset_info.json``, ``features.json``); the build parameters and
statistics (counts, length histogram, skipped records and why) are in ``metadata.json`` next to them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds
from etils import epath

from ankh_jax.data import uniref_inputs
from ankh_jax.data.uniref_records import BuildRules, SinglePass
from ankh_jax.errors import InputError

DATASET_VERSION = "1.0.0"
UNIPROT = "https://ftp.uniprot.org/pub/databases/uniprot/uniref"


class UnirefConfig(tfds.core.BuilderConfig):
    """A dataset of the builder: its name, and the FASTA names looked for in a tfds manual directory."""

    def __init__(self, *, fasta_names: tuple[str, ...], source: str, **kwargs):
        super().__init__(version=DATASET_VERSION, **kwargs)
        self.fasta_names = fasta_names
        self.source = source


def _uniprot(level: int) -> UnirefConfig:
    name = f"uniref{level}"
    return UnirefConfig(name=name, fasta_names=(f"{name}.fasta.gz", f"{name}.fasta"), source=f"{UNIPROT}/{name}/",
                        description=f"UniRef{level} cluster representatives (UniProt).")


CONFIGS = (_uniprot(50), _uniprot(90), _uniprot(100),
           UnirefConfig(name="bfd", fasta_names=("bfd.fasta.gz", "bfd.fasta"), source="https://bfd.mmseqs.com/",
                        description="The Big Fantastic Database's sequences, from a FASTA of them."))
CONFIG_NAMES = tuple(c.name for c in CONFIGS)


def check_config_name(name: str) -> str:
    if name not in CONFIG_NAMES:
        raise InputError(f"unknown dataset config {name!r}; choose one of {', '.join(CONFIG_NAMES)}")
    return name


def dataset_dir(data_dir: str, config: str = "uniref50") -> str:
    """Where a built dataset lives: ``data_dir/<config>/<version>``."""
    return os.path.join(os.fspath(data_dir), check_config_name(config), DATASET_VERSION)


class Uniref(tfds.core.GeneratorBasedBuilder):
    """Protein sequences from FASTA (``id``, cleaned ``sequence``); see the module docstring."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {  # noqa: RUF012 - the attribute tfds reads
        DATASET_VERSION: "Sequences cleaned with Ankh's rules; validation split by SHA-1 of the id."}
    BUILDER_CONFIGS = list(CONFIGS)  # noqa: RUF012 - the attribute tfds reads
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the dataset's FASTA (uniref50.fasta.gz from https://ftp.uniprot.org/pub/databases/uniprot/uniref/, "
        "...) in the manual directory, or pass --fasta to scripts/prepare_uniref50.py (paths or globs).")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9's default probes ``importlib_resources``, a package it does not install; this file is the answer.
        return epath.Path(__file__)

    def __init__(self, *, rules: BuildRules | None = None, fasta_files: Sequence[str] | None = None,
                 progress: bool = False, config=None, **kwargs):
        # Each config is its own dataset on disk: its name (not the builder's) names the directory and the shard
        # files, as the one-dataset ``uniref50`` builder did (see ``_build_data_dir``).
        self.name = getattr(config, "name", config) or self.BUILDER_CONFIGS[0].name
        self.rules = rules or BuildRules()
        self.fasta_files = list(fasta_files) if fasta_files else None
        self.progress = progress
        self.single_pass: SinglePass | None = None
        self._bar = None  # the one-process build's progress bar
        super().__init__(config=config, **kwargs)

    def _build_data_dir(self, given_data_dir):
        data_dir, dataset_dir_ = tfds.core.utils.file_utils.get_data_dir_and_dataset_dir(
            given_data_dir=given_data_dir, builder_name=self.name, config_name=None, version=self.version)
        return os.fspath(data_dir), os.fspath(dataset_dir_)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.builder_config.description + " For pretraining Ankh.",
            features=tfds.features.FeaturesDict({"id": tfds.features.Text(), "sequence": tfds.features.Text()}),
            homepage=self.builder_config.source,
            citation="Suzek et al., UniRef clusters, Bioinformatics 31(6), 2015.",
            metadata=tfds.core.MetadataDict(),
        )

    def input_files(self, dl_manager) -> list[str]:
        if self.fasta_files:
            return self.fasta_files
        manual_dir = os.fspath(dl_manager.manual_dir)
        for name in self.builder_config.fasta_names:
            if os.path.exists(os.path.join(manual_dir, name)):
                return [os.path.join(manual_dir, name)]
        raise InputError(f"none of {list(self.builder_config.fasta_names)} in the manual directory {manual_dir}. "
                         + self.MANUAL_DOWNLOAD_INSTRUCTIONS)

    def _record_metadata(self, files: Sequence[str], runner: str | None) -> None:
        self.info.metadata.update({"config": self.builder_config.name, "source_files": list(files),
                                   "beam_runner": runner, **self.rules.metadata()})

    def _split_generators(self, dl_manager):
        files = self.input_files(dl_manager)
        self._record_metadata(files, None)
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(desc="reading FASTA", unit=" records", mininterval=1.0, smoothing=0.1)
        self.single_pass = SinglePass(files, self.rules, on_record=None if self._bar is None else self._bar.update)
        return {split: self._generate_examples(split) for split in self.rules.splits}

    def _generate_examples(self, split: str):
        for rid, seq in self.single_pass.records(split):
            yield rid, {"id": rid, "sequence": seq}
        if self._bar is not None and self.single_pass.stats is not None:
            self._bar.close()
            self._bar = None

    def collected_stats(self) -> dict:
        """The statistics of the build just run (one process: the single pass's)."""
        return self.single_pass.stats.metadata()

    def _download_and_prepare(self, dl_manager, download_config):
        start = time.time()
        super()._download_and_prepare(dl_manager, download_config)
        self.info.metadata.update(self.collected_stats())
        self.info.metadata["build_seconds"] = round(time.time() - start, 3)


class BeamUniref(Uniref, skip_registration=True):
    """:class:`Uniref` whose splits come from one Apache Beam pipeline (``ankh_jax.data.uniref_beam``, imported
    here only): the same datasets, the same files."""

    def _split_generators(self, dl_manager, pipeline):
        from ankh_jax.data import uniref_beam

        files = self.input_files(dl_manager)
        self._record_metadata(files, pipeline.options.get_all_options().get("runner"))
        self._stats_path = self.data_path / uniref_beam.STATS_FILE  # in the temporary dir tfds renames when done
        return uniref_beam.split_pcollections(pipeline, files, self.rules, os.fspath(self._stats_path))

    def collected_stats(self) -> dict:
        stats = json.loads(self._stats_path.read_text())
        self._stats_path.unlink()
        return stats


class Uniref50(Uniref):
    """The name ``uniref50`` had before the configs: the ``uniref50`` config of :class:`Uniref`, same files."""

    BUILDER_CONFIGS = [CONFIGS[0]]  # noqa: RUF012 - the attribute tfds reads


def build(fasta: str | Sequence[str], data_dir: str, *, config: str = "uniref50", num_shards: int | None = None,
          validation_fraction: float = 0.0005, min_length: int = 1, max_length: int | None = None,
          skip_invalid: bool = True, progress: bool = False, overwrite: bool = False,
          beam_runner: str | None = None, beam_options: Sequence[str] = ()) -> Uniref:
    """Builds ``data_dir/<config>/1.0.0`` from FASTA paths or globs and returns the (prepared) builder.

    ``num_shards`` files per split (default: tfds's size-based choice); pick at least the number of hosts that
    will read the data. ``skip_invalid=False`` makes a bad record an error naming file, record and position.
    ``beam_runner`` (e.g. ``"DirectRunner"``) builds on Apache Beam with ``beam_options`` (pipeline flags such as
    ``--direct_num_workers=2``). An existing build is reused unless ``overwrite``. Bad input (no such file, a glob
    matching nothing, not FASTA, an unknown config, a validation split that would be empty) is an
    :class:`InputError` raised before anything is written.
    """
    check_config_name(config)
    rules = BuildRules(validation_fraction, min_length, max_length, skip_invalid)
    if num_shards is not None and num_shards < 1:
        raise InputError(f"num_shards must be >= 1, got {num_shards}")
    files = uniref_inputs.resolve_fasta_files(fasta)
    builder_cls = BeamUniref if beam_runner else Uniref
    uniref_inputs.check_fasta_heads(files)
    uniref_inputs.check_validation_split(files, rules)
    builder = builder_cls(config=config, data_dir=data_dir, rules=rules, fasta_files=files, progress=progress)
    if builder.is_prepared() and not overwrite:
        return builder
    options = None
    if beam_runner:
        from ankh_jax.data.uniref_beam import pipeline_options

        options = pipeline_options(beam_runner, beam_options)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    download_config = tfds.download.DownloadConfig(num_shards=num_shards, try_download_gcs=False,
                                                   download_mode=mode, beam_runner=None, beam_options=options)
    try:
        builder.download_and_prepare(download_config=download_config)
    except AssertionError as e:  # tfds's way of saying a split is smaller than the shard count, or a duplicate
        if "number_of_shards" in str(e):
            raise InputError(f"cannot write {num_shards} shards per split ({e}); lower num_shards or raise "
                             "validation_fraction") from e
        if "share the same hashed key" in str(e):
            raise InputError(f"{_duplicated_id(e)} appears twice in the input ({', '.join(files)}); record ids "
                             "(a header's first word) must be unique across the files") from e
        raise
    return builder


def _duplicated_id(err: AssertionError) -> str:
    """The id behind tfds's duplicated-key error (its cause holds the serialized example), or a stand-in."""
    item = getattr(err.__context__, "item1", None)
    try:
        import tensorflow as tf

        return repr(tf.train.Example.FromString(item).features.feature["id"].bytes_list.value[0].decode())
    except Exception:  # noqa: BLE001 - tfds changed its error: still say what is wrong, without the id
        return "a record id"
