"""The fine-tuning run behind ``python -m ankh_jax.finetune``: one benchmark task, one Ankh encoder, one head.

:func:`run` (gin-configured) loads the task and the encoder, trains the head in the chosen mode, evaluates every
test split and writes ``MODEL_DIR`` (see :mod:`ankh_jax.finetune` for the files and the resume rules).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import time

import gin
import jax
import numpy as np

from ankh_jax.downstream import leakage, run_records, trainer
from ankh_jax.downstream import lora as lora_lib
from ankh_jax.downstream.embedding_cache import EmbeddingCacheConfig, build_cache
from ankh_jax.downstream.encoder_source import load_encoder
from ankh_jax.downstream.task_spec import TaskData, TaskSpec, load_task
from ankh_jax.errors import InputError
from ankh_jax.plots.finetune_plots import draw_finetune_plots
from ankh_jax.storage.lock import DirectoryLock
from ankh_jax.storage.paths import check_reachable, is_remote
from ankh_jax.storage.remote_copy import working_folder


@gin.configurable
@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The ConvBERT head; defaults are the Ankh notebooks' (hidden = d_model / 2, 4 heads, kernel 7, max pool)."""

    nhead: int = 4
    hidden_dim: int | None = None
    num_layers: int = 1
    kernel_size: int = 7
    dropout: float = 0.2
    pooling: str = "max"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 0                     # 0: no LoRA (full mode trains the whole encoder)
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")


def _forward_fns(head, encoder, mode: str, lora_cfg: LoraConfig, residues_only: bool = True):
    """(forward, uses_embeddings). forward(trainable, frozen, batch, rng, deterministic) -> logits."""
    def head_apply(params, hidden, batch, rng, det):
        rngs = None if det or rng is None else {"dropout": rng}
        return head.apply({"params": params}, hidden, attention_mask=batch["mask"], deterministic=det, rngs=rngs)

    if mode == "frozen":
        def forward(t, f, batch, rng, det):
            return head_apply(t["head"], batch["inputs"], batch, rng, det)
        return forward

    module = encoder.module()

    def encode(enc_params, batch, rng, det):
        rngs = None
        if not det and rng is not None:
            rng, sub = jax.random.split(rng)
            rngs = {"dropout": sub}
        hidden = module.apply({"params": enc_params}, batch["inputs"], enable_dropout=not det, rngs=rngs)
        return hidden[:, :batch["mask"].shape[1]], rng   # drop the </s> column (masked out for shorter ones)

    if lora_cfg.rank > 0:
        def forward(t, f, batch, rng, det):
            merged = lora_lib.merge(f, t["lora"], alpha=lora_cfg.alpha, rank=lora_cfg.rank)
            hidden, rng = encode(merged, batch, rng, det)
            return head_apply(t["head"], hidden, batch, rng, det)
    else:
        def forward(t, f, batch, rng, det):
            hidden, rng = encode(t["encoder"], batch, rng, det)
            return head_apply(t["head"], hidden, batch, rng, det)
    return forward


def _run_without_head(task: TaskSpec, mode: str):
    """The run of a task that trains no ConvBERT head: the lookup (``run_lookup``) or contacts from attention maps
    (``run_attention_contacts``), named by the label kind. Each lives with its task (``ankh_jax.tasks.lookup`` /
    ``.contacts``), which the task's gin file imports; ankh_jax never imports the tasks, so it is found by its gin
    name. None when the task trains a head."""
    kind = task.label_kind
    where = kind.attention_run if mode == "attention" else kind.run_without_head
    if where is None:
        return None
    module, name = where
    if f"ankh_jax.tasks.{module}" not in sys.modules:  # importing it is what registers the configurable
        raise InputError(f"{name} is not registered: the {task.kind} task's gin file must `import "
                         f"ankh_jax.tasks.{module}`")
    return gin.get_configurable(name)


def _print_table(rows: list[tuple[str, dict]], title: str):
    names = sorted({k for _, r in rows for k in r})
    print(f"\n{title}")
    print("| split | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for split, r in rows:
        print(f"| {split} | " + " | ".join(f"{r[n]:.4f}" if n in r else "" for n in names) + " |")


@gin.configurable
def run(model_dir: str = gin.REQUIRED, task: TaskSpec = gin.REQUIRED, encoder: str = gin.REQUIRED,
        mode: str = "frozen", seed: int = 0, strict: bool = False, progress: bool = True, log_every: int = 20,
        head_config: HeadConfig | None = None, optimizer: trainer.OptimizerConfig | None = None,
        batching: trainer.BatchingConfig | None = None, stopping: trainer.StoppingConfig | None = None,
        lora: LoraConfig | None = None, embeddings: EmbeddingCacheConfig | None = None) -> dict:
    """Runs one task end to end and returns what ``results.json`` holds.

    ``strict``: refuse (rather than warn about) splits that share or repeat sequences
    (``ankh_jax.downstream.leakage``). ``embeddings``: frozen mode's embedding cache (path, batch, dtypes).
    """
    if is_remote(model_dir):  # the run lives in the bucket; its writers work in a local copy pushed back to it
        check_reachable(model_dir, "MODEL_DIR")
        with working_folder(model_dir, "fine-tuning") as local:
            return run(local, task, encoder, mode, seed, strict, progress, log_every, head_config, optimizer,
                       batching, stopping, lora, embeddings)
    settings = Settings(mode, seed, head_config or HeadConfig(), optimizer or trainer.OptimizerConfig(),
                        batching or trainer.BatchingConfig(), stopping or trainer.StoppingConfig(),
                        lora or LoraConfig(), embeddings or EmbeddingCacheConfig(), progress, log_every)
    if mode not in ("frozen", "full", "attention"):
        raise InputError(f"run.mode={mode!r}; expected 'frozen', 'full' or 'attention'")
    if mode == "attention" and task.label_kind.attention_run is None:
        raise InputError(f"run.mode='attention' is for contact tasks only, not {task.name} ({task.kind})")
    # Everything is read and checked before the first write: the directory, the data, the encoder, the records.
    run_records.check_model_dir(model_dir)
    started = time.perf_counter()
    data = load_task(task)
    sizes = {k: len(v.sequences) for k, v in data.splits.items()}
    leaks = leakage.count_leakage(data.splits)
    leakage.check(task.name, leaks, strict=strict, warn=lambda line: print(line, file=sys.stderr, flush=True))
    headless = _run_without_head(task, mode)
    if headless is None and not {"train", "valid"} <= set(data.splits):
        raise InputError(f"task {task.name}: training a head needs train and validation splits "
                         f"(bind {task.name}_task.valid, or a valid_fraction > 0); have {sorted(data.splits)}")
    enc = load_encoder(encoder)
    identity = json.loads(json.dumps({"task": dataclasses.asdict(task), "encoder_fingerprint": enc.fingerprint,
                                      **settings.identity()}))
    run_records.state_of(model_dir, identity)
    with DirectoryLock(model_dir, "fine-tuning"):
        state = run_records.state_of(model_dir, identity)  # again: another run may have written meanwhile
        path = functools.partial(os.path.join, model_dir)
        if state == run_records.COMPLETE:
            results = run_records.read_json(path(run_records.RESULTS_FILE))
            print(f"{model_dir} already holds the results of this run; nothing to do")
            _print_table(list(results["tests"].items()), f"{task.name}: test results ({mode})")
            return results
        _write_run_records(model_dir, state, identity, enc, data, leaks)
        print(f"task {task.name} ({task.kind}, metric {task.metric}): "
              + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        if headless is not None:
            results = headless(data, enc, model_dir=model_dir, seed=seed, progress=progress)
        else:
            results = _train_head(data, enc, model_dir, settings)
        results.update(task=task.name, kind=task.kind, metric=task.metric, mode=mode, encoder=enc.source,
                       encoder_fingerprint=enc.fingerprint, split_sizes=sizes, leakage=leaks,
                       test_proteins="whole", train_valid_max_length=task.max_length,
                       seconds_total=time.perf_counter() - started)
        run_records.write_json_atomically(path(run_records.RESULTS_FILE), results)
        shutil.rmtree(path(run_records.EPOCH_STATE_DIR), ignore_errors=True)  # only needed to resume
    _print_table([(k, v) for k, v in results["tests"].items()], f"{task.name}: test results ({mode})")
    return results


@dataclasses.dataclass(frozen=True)
class Settings:
    """A run's settings besides its task and encoder (``run``'s arguments, grouped)."""

    mode: str
    seed: int
    head: HeadConfig
    optimizer: trainer.OptimizerConfig
    batching: trainer.BatchingConfig
    stopping: trainer.StoppingConfig
    lora: LoraConfig
    embeddings: EmbeddingCacheConfig
    progress: bool
    log_every: int

    def identity(self) -> dict:
        """The settings that change the result (``run.json``'s identity, with the task and the encoder)."""
        return {"mode": self.mode, "seed": self.seed, "head": dataclasses.asdict(self.head),
                "optimizer": dataclasses.asdict(self.optimizer), "batching": dataclasses.asdict(self.batching),
                "stopping": dataclasses.asdict(self.stopping), "lora": dataclasses.asdict(self.lora),
                "embeddings": {"compute_dtype": self.embeddings.compute_dtype,
                               "storage_dtype": self.embeddings.storage_dtype}}


def _write_run_records(model_dir: str, state: str, identity: dict, enc, data: TaskData, leaks: dict) -> None:
    """``run.json`` (first: a kill from here on leaves a directory that resumes), ``config.gin``, ``labels.json``."""
    path = functools.partial(os.path.join, model_dir)
    if state == run_records.FRESH:
        run_records.write_json_atomically(path(run_records.RUN_FILE), {"identity": identity,
                                                                      "encoder_source": enc.source,
                                                                      "leakage": leaks})
    else:
        print(f"resuming the run in {model_dir}")
    if not os.path.exists(path(run_records.CONFIG_FILE)):  # the first run's config is the one kept
        run_records.write_atomically(path(run_records.CONFIG_FILE), gin.operative_config_str()
                                     if gin.config_is_locked() else gin.config_str())
    run_records.write_json_atomically(path(run_records.LABELS_FILE),
                                      {"task": data.spec.name, "kind": data.spec.kind, "classes": data.classes})


def _embeddings(data: TaskData, enc, model_dir: str, settings: Settings):
    """Frozen mode: every split's sequences embedded once into the cache; ``(sequence -> [L, d], seconds)``."""
    every = [s for split in data.splits.values() for s in split.sequences]
    t0 = time.perf_counter()
    cache = settings.embeddings
    store = build_cache(enc, every, cache.path or os.path.join(model_dir, "embeddings.h5"),
                        batch_tokens=cache.batch_tokens, storage_dtype=cache.storage_dtype,
                        compute_dtype=cache.compute_dtype, progress=settings.progress)
    return store.__getitem__, time.perf_counter() - t0


def _train_head(data: TaskData, enc, model_dir: str, settings: Settings) -> dict:
    spec, kind, head_cfg, lora_cfg = data.spec, data.spec.label_kind, settings.head, settings.lora
    head_settings = {"input_dim": enc.d_model, "nhead": head_cfg.nhead,
                     "hidden_dim": head_cfg.hidden_dim or enc.d_model // 2, "num_layers": head_cfg.num_layers,
                     "kernel_size": head_cfg.kernel_size, "dropout": head_cfg.dropout}
    head = kind.head(data.num_classes, head_settings, head_cfg.pooling, data.splits["train"].labels)
    key = jax.random.key(settings.seed)
    dummy = np.zeros((1, 32, enc.d_model), np.float32)
    trainable = {"head": jax.jit(head.init)(key, dummy, np.ones((1, 32), np.int32))["params"]}  # one compile
    frozen, embeddings, timings = None, None, {}
    if settings.mode == "frozen":
        embeddings, timings["embed_seconds"] = _embeddings(data, enc, model_dir, settings)
    elif lora_cfg.rank > 0:
        frozen = enc.params
        trainable["lora"] = lora_lib.init(enc.params, lora_cfg.rank, lora_cfg.targets,
                                          key=jax.random.fold_in(key, 1))
        print(f"LoRA rank {lora_cfg.rank} on {lora_cfg.targets}: {lora_lib.count(trainable['lora'])} parameters")
    else:
        trainable["encoder"] = enc.params
    forward = _forward_fns(head, enc, settings.mode, lora_cfg)
    source = trainer.BatchSource(kind, settings.batching, embeddings, data.num_classes,
                                 spec.min_contact_separation)
    result = trainer.train(forward, trainable, frozen, data.splits["train"], data.splits["valid"], source=source,
                           optimizer=settings.optimizer, stopping=settings.stopping, model_dir=model_dir,
                           seed=settings.seed, progress=settings.progress, log_every=settings.log_every)
    timings["train_seconds"] = result.seconds
    predictions = {name[len("test/"):]: trainer.predict(forward, result.trainable, frozen, data.splits[name], source)
                   for name in data.test_names()}  # once: the scores and the pictures both come from these
    tests = {test: kind.score_outputs(outputs, data.splits[f"test/{test}"].labels)
             for test, outputs in predictions.items()}
    draw_finetune_plots(model_dir, lambda: kind.draw_test_plots(model_dir, data, predictions))
    return {"valid_best": result.best_metrics, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "steps": result.steps, "tests": tests, **timings}
