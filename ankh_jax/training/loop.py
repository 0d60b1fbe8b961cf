"""Pretraining: gin-configured ``train()``: data in, sharded steps, metrics, checkpoints, resume.

One call of :func:`train` does, in this order (everything that can fail on bad input happens before the first
write to ``model_dir``):

1. the settings (:mod:`ankh_jax.training.run_config`'s dataclasses, each bound in gin) are checked;
2. the mesh and rules (``Partitioner``), the model, the optimizer and the state layout (abstract shapes only);
3. the training (and validation) input iterators, each host reading its own shard of the global batch;
4. the state: resumed from the newest readable checkpoint in ``model_dir`` (with the input position; an optimizer
   state of the earlier Adafactor layout is converted), else loaded from a HuggingFace Ankh directory
   (``CheckpointConfig.init_from_hf``), else random; always created already sharded;
5. ``model_config.json`` and ``config.gin`` written by process 0, then :class:`~ankh_jax.training.step_loop.StepLoop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gin
import jax
import numpy as np

from ankh_jax.errors import InputError
from ankh_jax.io import checkpoints as ckpt_lib
from ankh_jax.training import run_dir
from ankh_jax.training.metrics import MetricsWriter, gin_config_markdown
from ankh_jax.training.partitioning import Partitioner
from ankh_jax.training.program import TrainProgram, build_program, restore_state
from ankh_jax.training.run_config import CheckpointConfig, DataConfig, EvalConfig, LoopConfig, ProgramConfig
from ankh_jax.training.run_dir import RunConfigError
from ankh_jax.training.step_loop import NonFiniteLossError, RunInputs, StepLoop, TrainResult
from ankh_jax.training.steps import BATCH_KEYS_REQUIRED, TrainState

__all__ = ["NonFiniteLossError", "TrainResult", "train"]


def _default_input_fn():
    from ankh_jax.data.input_pipeline import make_input

    return make_input


@gin.configurable
def train(model_dir: str = gin.REQUIRED, program: ProgramConfig | None = None, data: DataConfig | None = None,
          loop: LoopConfig | None = None, checkpointing: CheckpointConfig | None = None,
          evaluation: EvalConfig | None = None) -> TrainResult:
    """Pretrains (or continues pretraining) an Ankh model; each setting left None is its dataclass as gin binds it
    (configs/runs/pretrain.gin)."""
    settings = checked_settings(program, data, loop, checkpointing, evaluation)
    model_dir, built, shard, inputs = prepare(model_dir, settings)
    result = _run(model_dir, built, inputs, settings[2:], shard)
    if result.stopped_by == "finished":
        run_dir.print_summary(model_dir, result.step)
    return result


def checked_settings(program: ProgramConfig | None = None, data: DataConfig | None = None,
                     loop: LoopConfig | None = None, checkpointing: CheckpointConfig | None = None,
                     evaluation: EvalConfig | None = None) -> tuple:
    """``(program, data, loop, checkpointing, evaluation)``, each None replaced by its gin-bound dataclass, all
    checked (one line naming the binding on a bad value)."""
    settings = (program or ProgramConfig(), data or DataConfig(), loop or LoopConfig(),
                checkpointing or CheckpointConfig(), evaluation or EvalConfig())
    program, data = settings[:2]
    program.check()
    data.check(program.num_microbatches)
    for cfg in settings[2:]:
        cfg.check()
    if data.input_fn is None or data.input_fn is _default_input_fn():  # Ankh's objective: span corruption
        _check_sentinels(data.feature_lengths)
    return settings


def prepare(model_dir: str, settings: tuple) -> tuple[str, TrainProgram, dict, RunInputs]:
    """Everything before the first write: MODEL_DIR's path, the program (mesh, model, optimizer, layout), this
    host's data shard and its input iterators (a missing data path or split fails here)."""
    model_dir = run_dir.resolve_model_dir(model_dir)  # a local path or gs://BUCKET/run
    built, shard = _build(settings[0], settings[1])
    return model_dir, built, shard, _make_inputs(settings[1], settings[4], shard)


def _build(program_cfg: ProgramConfig, data: DataConfig) -> tuple[TrainProgram, dict]:
    """The program and this host's share of the data; the mesh, schedule, optimizer and batch split are checked
    here, before anything is read or written."""
    partitioner = Partitioner()
    try:
        data_parallel = partitioner.batch_shards
    except InputError as err:
        raise RunConfigError(f"Partitioner.mesh_shape: {err}") from None
    if data.global_batch_size % data_parallel:
        raise RunConfigError(f"DataConfig.global_batch_size (BATCH_SIZE) = {data.global_batch_size} is not divisible "
                             f"by the data-parallel size {data_parallel} (Partitioner.mesh_shape over "
                             f"{jax.device_count()} devices)")
    try:
        program = build_program(program_cfg, partitioner)
        shard_id, num_shards, host_batch = partitioner.host_data_shard(data.global_batch_size)
    except InputError as err:
        raise RunConfigError(str(err)) from None
    micro = program_cfg.num_microbatches
    if micro > 1 and host_batch % micro:
        raise RunConfigError(f"per-host batch {host_batch} not divisible by ProgramConfig.num_microbatches {micro}")
    data_shards = data.num_data_shards or num_shards
    if data_shards % num_shards or host_batch % (data_shards // num_shards):
        raise RunConfigError(f"DataConfig.num_data_shards={data_shards} must be a multiple of the {num_shards} hosts "
                             f"and divide their batch of {host_batch}")
    return program, {"shard_id": shard_id, "num_shards": num_shards, "host_batch": host_batch,
                     "per_host": data_shards // num_shards, "data_shards": data_shards}


def _make_inputs(data: DataConfig, evaluation: EvalConfig, shard: dict) -> RunInputs:
    """This host's training iterator (its run of data shards) and the validation factory; a missing data path
    or split fails here, before anything is written."""
    from ankh_jax.data.input_pipeline import HostInput

    make_input = data.input_fn or _default_input_fn()
    common = {"feature_lengths": dict(data.feature_lengths), "pack": data.pack}
    per_host = shard["per_host"]
    train_iter = HostInput([
        make_input(data.task_name, "train", seed=data.seed, shuffle=True, repeat=True,
                   batch_size=shard["host_batch"] // per_host, shard_id=shard["shard_id"] * per_host + j,
                   num_shards=shard["data_shards"], **common) for j in range(per_host)])
    common.update(batch_size=shard["host_batch"], shard_id=shard["shard_id"], num_shards=shard["num_shards"])
    eval_factory = None
    if evaluation.every_steps:
        eval_task = evaluation.task_name or data.task_name

        def eval_factory():
            return make_input(eval_task, evaluation.split, seed=data.seed, shuffle=False, repeat=False, **common)
        first_batch(eval_factory(), f"task {eval_task!r} split {evaluation.split!r}")
    return RunInputs(train_iter, eval_factory, data.global_batch_size, data.task_name)


def first_batch(iterator, where: str) -> dict:
    """The first batch, read before anything is written, so a missing data path or split fails early."""
    try:
        batch = next(iterator)
    except StopIteration:
        raise InputError(f"{where} is empty") from None
    except Exception as err:
        raise InputError(f"cannot read {where}: {type(err).__name__}: {err}") from err
    missing = [k for k in BATCH_KEYS_REQUIRED if k not in batch]
    if missing:
        raise InputError(f"{where}: batches lack {missing}; got {sorted(batch)}")
    return batch


def _run(model_dir: str, program: TrainProgram, inputs: RunInputs, settings: tuple, shard: dict) -> TrainResult:
    """MODEL_DIR's lock, the state (resumed, imported or fresh), the first writes, then the steps."""
    loop, checkpointing, evaluation = settings
    run_dir.check_model_dir_config(model_dir, program.config)
    # What MODEL_DIR holds, as process 0 sees it before anyone writes, so every host takes the same branches.
    exists, has_checkpoints = run_dir.agreed(*run_dir.model_dir_state(model_dir))
    # The lock is taken here if MODEL_DIR exists (restoring may move checkpoints aside), else at the first write.
    lock = run_dir.lock_model_dir(model_dir) if exists else None
    checkpointer = None
    new_checkpointer = lambda: ckpt_lib.Checkpointer(model_dir, save_interval_steps=checkpointing.every_steps,
                                                     max_to_keep=checkpointing.keep,
                                                     async_save=checkpointing.async_save)
    try:
        checkpointer = new_checkpointer() if has_checkpoints else None
        state, start_step = _initial_state(program, checkpointer, inputs, checkpointing, shard, loop.seed)
        pending = first_batch(inputs.train, f"task {inputs.task_name!r} split 'train'")
        if start_step >= loop.num_train_steps:
            run_dir.info(f"nothing to do: the checkpoint is at step {start_step} >= LoopConfig.num_train_steps "
                         f"{loop.num_train_steps}")
            return TrainResult(start_step, state.params, "finished", {}, None)
        if not exists:  # a collective: decided by the agreed flag, never by `lock` (None on every process but 0)
            lock = run_dir.lock_model_dir(model_dir)
        checkpointer = checkpointer or new_checkpointer()
        checkpointer.check_room(state.params, state.opt_state, "one checkpoint of this run")  # before any step
        ckpt_lib.write_model_config(model_dir, program.config)
        run_dir.write_operative_config(model_dir)
        steps = StepLoop(program, checkpointer, inputs, loop, checkpointing, evaluation, model_dir)
        writer = MetricsWriter(model_dir, total_steps=loop.num_train_steps, start_step=start_step,
                               progress=loop.progress_bar)
        writer.write_text("config", gin_config_markdown(gin.operative_config_str()), start_step)  # as config.gin
        return steps.run(state, start_step, pending, writer)
    finally:
        if checkpointer is not None:
            checkpointer.close()
        if lock is not None:
            lock.release()


def _initial_state(program: TrainProgram, checkpointer, inputs: RunInputs, checkpointing: CheckpointConfig,
                   shard: dict, seed: int) -> tuple[TrainState, int]:
    restored = restore_state(program, checkpointer, report=run_dir.warn) if checkpointer is not None else None
    if restored is not None:
        state = TrainState(step=jax.device_put(np.int32(restored.step), program.partitioner.replicated()),
                           params=restored.params, opt_state=restored.opt_state)
        run_dir.restore_input_position(inputs.train, restored.input_states, shard["shard_id"] * shard["per_host"],
                                       restored.num_processes)
        run_dir.info(f"resumed from the checkpoint at step {restored.step} in {checkpointer.directory}")
        return state, restored.step
    if checkpointing.init_from_hf:
        state = program.layout.from_params(_load_hf_params(checkpointing.init_from_hf, program.config))
        run_dir.info(f"initialised from the HuggingFace model in {checkpointing.init_from_hf}")
        return state, 0
    return program.layout.create(jax.random.key(seed)), 0


def _check_sentinels(feature_lengths: Mapping[str, int]) -> None:
    """Span corruption of a full-length crop must fit Ankh's 116 sentinels (checked here, before any data is read,
    with the gin bindings' knobs)."""
    from ankh_jax.data import span_corruption

    inputs_length = dict(feature_lengths).get("inputs")
    if inputs_length is None:
        return
    knobs = span_corruption.effective_knobs()
    try:
        span_corruption.check_sentinel_budget(inputs_length, knobs["noise_density"], knobs["mean_noise_span_length"],
                                              knobs["merge_adjacent_spans"])
    except InputError as err:
        raise RunConfigError(f"DataConfig.feature_lengths['inputs'] (INPUTS_LENGTH) = {inputs_length} with "
                             f"span_corruption.noise_density / mean_noise_span_length: {err}") from None


def _load_hf_params(path: str, config) -> Any:
    from ankh_jax.io.loading import load  # the one load path: verified, normalised once into the run's layout

    hf_config, params = load(path, scan_layers=config.scan_layers)
    diffs = {f: (getattr(hf_config, f), getattr(config, f)) for f in run_dir.ARCH_FIELDS
             if getattr(hf_config, f) != getattr(config, f)}
    if diffs:
        detail = ", ".join(f"{k}: HF {a} vs gin {b}" for k, (a, b) in diffs.items())
        raise InputError(f"init_from_hf={path}: the HuggingFace model does not match MODEL_CONFIG ({detail}); "
                         "use the model gin file that matches it")
    return params
