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
import time

import gin
import jax
import numpy as np

from ankh_jax.downstream import lora as lora_lib
from ankh_jax.downstream import objectives, run_records, trainer
from ankh_jax.downstream.embedding_cache import build_cache
from ankh_jax.downstream.encoder_source import load_encoder
from ankh_jax.downstream.task_spec import POOLED_KINDS, TaskData, TaskSpec, load_task
from ankh_jax.errors import InputError
from ankh_jax.io.dir_lock import DirectoryLock
from ankh_jax.plots.finetune_plots import draw_finetune_plots


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


def _headless_runner(kind: str):
    """The run of a task that trains no ConvBERT head: the lookup (``run_lookup``) or contacts from attention maps
    (``run_attention_contacts``). Each lives with its task (``ankh_jax.tasks.lookup`` / ``.contacts``), which the
    task's gin file imports; ankh_jax never imports the tasks, so it is found by its gin name."""
    name = "run_lookup" if kind == "lookup" else "run_attention_contacts"
    try:
        return gin.get_configurable(name)
    except ValueError:
        module = "lookup" if kind == "lookup" else "contacts"
        raise InputError(f"{name} is not registered: the {kind} task's gin file must `import "
                         f"ankh_jax.tasks.{module}`") from None


def _print_table(rows: list[tuple[str, dict]], title: str):
    names = sorted({k for _, r in rows for k in r})
    print(f"\n{title}")
    print("| split | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for split, r in rows:
        print(f"| {split} | " + " | ".join(f"{r[n]:.4f}" if n in r else "" for n in names) + " |")


@gin.configurable
def run(model_dir: str = gin.REQUIRED, task: TaskSpec = gin.REQUIRED, encoder: str = gin.REQUIRED,
        mode: str = "frozen", seed: int = 0, embedding_cache: str | None = None, batch_tokens: int = 16384,
        cache_dtype: str = "float32", embed_dtype: str = "float32", progress: bool = True, log_every: int = 20,
        head_config: HeadConfig | None = None, optimizer: trainer.OptimizerConfig | None = None,
        lora: LoraConfig | None = None) -> dict:
    """Runs one task end to end and returns what ``results.json`` holds.

    Frozen mode: ``embed_dtype`` is the encoder's compute dtype while embedding (``'bfloat16'`` on TPU),
    ``cache_dtype`` the HDF5 storage dtype (``'float16'`` halves the cache), ``embedding_cache`` another cache
    path (default ``MODEL_DIR/embeddings.h5``), ``batch_tokens`` the embedding batch budget.
    """
    head_cfg = head_config or HeadConfig()
    opt_cfg = optimizer or trainer.OptimizerConfig()
    lora_cfg = lora or LoraConfig()
    if mode not in ("frozen", "full", "attention"):
        raise InputError(f"run.mode={mode!r}; expected 'frozen', 'full' or 'attention'")
    if mode == "attention" and task.kind != "contact":
        raise InputError(f"run.mode='attention' is for contact tasks only, not {task.name} ({task.kind})")
    # Everything is read and checked before the first write: the directory, the data, the encoder, the records.
    run_records.check_model_dir(model_dir)
    started = time.perf_counter()
    data = load_task(task)
    sizes = {k: len(v.sequences) for k, v in data.splits.items()}
    trains_head = task.kind != "lookup" and mode != "attention"
    if trains_head and not {"train", "valid"} <= set(data.splits):
        raise InputError(f"task {task.name}: training a head needs train and validation splits "
                         f"(bind {task.name}_task.valid, or a valid_fraction > 0); have {sorted(data.splits)}")
    enc = load_encoder(encoder)
    identity = json.loads(json.dumps({
        "task": dataclasses.asdict(task), "mode": mode, "seed": seed, "encoder_fingerprint": enc.fingerprint,
        "head": dataclasses.asdict(head_cfg), "optimizer": dataclasses.asdict(opt_cfg),
        "lora": dataclasses.asdict(lora_cfg), "cache_dtype": cache_dtype, "embed_dtype": embed_dtype}))
    run_records.state_of(model_dir, identity)
    with DirectoryLock(model_dir, "fine-tuning"):
        state = run_records.state_of(model_dir, identity)  # again: another run may have written meanwhile
        path = functools.partial(os.path.join, model_dir)
        if state == run_records.COMPLETE:
            results = run_records.read_json(path(run_records.RESULTS_FILE))
            print(f"{model_dir} already holds the results of this run; nothing to do")
            _print_table(list(results["tests"].items()), f"{task.name}: test results ({mode})")
            return results
        if state == run_records.FRESH:  # run.json first: a kill from here on leaves a directory that resumes
            run_records.write_json_atomically(path(run_records.RUN_FILE),
                                              {"identity": identity, "encoder_source": enc.source})
        else:
            print(f"resuming the run in {model_dir}")
        if not os.path.exists(path(run_records.CONFIG_FILE)):  # the first run's config is the one kept
            run_records.write_atomically(path(run_records.CONFIG_FILE), gin.operative_config_str()
                                         if gin.config_is_locked() else gin.config_str())
        print(f"task {task.name} ({task.kind}, metric {task.metric}): "
              + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        run_records.write_json_atomically(path(run_records.LABELS_FILE),
                                          {"task": task.name, "kind": task.kind, "classes": data.classes})
        if not trains_head:
            results = _headless_runner(task.kind)(data, enc, model_dir=model_dir, seed=seed, progress=progress)
        else:
            results = _train_head(data, enc, model_dir, mode, seed, head_cfg, opt_cfg, lora_cfg, embedding_cache,
                                  batch_tokens, cache_dtype, embed_dtype, progress, log_every)
        results.update(task=task.name, kind=task.kind, metric=task.metric, mode=mode, encoder=enc.source,
                       encoder_fingerprint=enc.fingerprint, split_sizes=sizes, test_proteins="whole",
                       train_valid_max_length=task.max_length, seconds_total=time.perf_counter() - started)
        run_records.write_json_atomically(path(run_records.RESULTS_FILE), results)
        shutil.rmtree(path(run_records.EPOCH_STATE_DIR), ignore_errors=True)  # only needed to resume
    _print_table([(k, v) for k, v in results["tests"].items()], f"{task.name}: test results ({mode})")
    return results


def _train_head(data: TaskData, enc, model_dir, mode, seed, head_cfg, opt_cfg, lora_cfg, embedding_cache,
                batch_tokens, cache_dtype, embed_dtype, progress, log_every) -> dict:
    spec = data.spec
    train_labels = data.splits["train"].labels
    mean = float(np.mean(train_labels)) if spec.kind == "sequence_regression" else None
    pooling = head_cfg.pooling if spec.kind in POOLED_KINDS else None
    head = objectives.build_head(data, enc.d_model, nhead=head_cfg.nhead,
                                 hidden_dim=head_cfg.hidden_dim or enc.d_model // 2, num_layers=head_cfg.num_layers,
                                 kernel_size=head_cfg.kernel_size, dropout=head_cfg.dropout, pooling=pooling,
                                 training_labels_mean=mean)
    key = jax.random.key(seed)
    dummy = np.zeros((1, 32, enc.d_model), np.float32)
    trainable = {"head": jax.jit(head.init)(key, dummy, np.ones((1, 32), np.int32))["params"]}  # one compile
    frozen, embeddings, timings = None, None, {}
    if mode == "frozen":
        every = [s for split in data.splits.values() for s in split.sequences]
        t0 = time.perf_counter()
        store = build_cache(enc, every, embedding_cache or os.path.join(model_dir, "embeddings.h5"),
                            batch_tokens=batch_tokens, storage_dtype=cache_dtype, compute_dtype=embed_dtype,
                            progress=progress)
        timings["embed_seconds"] = time.perf_counter() - t0
        embeddings = store.__getitem__
    elif lora_cfg.rank > 0:
        frozen = enc.params
        trainable["lora"] = lora_lib.init(enc.params, lora_cfg.rank, lora_cfg.targets,
                                          key=jax.random.fold_in(key, 1))
        print(f"LoRA rank {lora_cfg.rank} on {lora_cfg.targets}: {lora_lib.count(trainable['lora'])} parameters")
    else:
        trainable["encoder"] = enc.params
    forward = _forward_fns(head, enc, mode, lora_cfg)
    common = {"kind": spec.kind, "embeddings": embeddings, "num_classes": data.num_classes,
              "min_separation": spec.min_contact_separation}
    result = trainer.train(forward, trainable, frozen, data.splits["train"], data.splits["valid"],
                           metric=spec.metric, cfg=opt_cfg, model_dir=model_dir, seed=seed, progress=progress,
                           log_every=log_every, **common)
    timings["train_seconds"] = result.seconds
    tests = {}
    for name in data.test_names():
        tests[name[len("test/"):]] = trainer.evaluate(forward, result.trainable, frozen, data.splits[name],
                                                      metric=spec.metric, cfg=opt_cfg, **common)
    draw_finetune_plots(model_dir, data, lambda examples: trainer.predict(forward, result.trainable, frozen, examples,
                                                                          cfg=opt_cfg, **common))
    return {"valid_best": result.best_metrics, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "steps": result.steps, "tests": tests, **timings}
