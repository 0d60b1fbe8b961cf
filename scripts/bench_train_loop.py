"""The training loop's own cost: the trainer's steps/s against a bare jitted step on the same prefetched batches.

    python scripts/bench_train_loop.py [--steps=200] [--rounds=2] [--devices=8] [--tag=after]

Both sides run the tiny Ankh (configs/pretrain_tiny_cpu.gin; 128 input tokens, batch 32) on ``--devices`` fake
CPU devices, fed the same few host batches, cycled (the input pipeline is not measured):

* trainer: ``python -m ankh_jax.train``'s loop in-process, its input bound to those batches; the rate is its own
  ``steps_per_s`` of the one metrics row at the last step (the first step, which compiles, and the final
  checkpoint are left out, as the trainer leaves them out);
* bare: the trainer's jitted train step (``build_program``) in a plain Python loop over the same batches, each
  made a global array first as the trainer does, after one warm-up step; timed until the last step is done.

Run it from the checkout being measured (its ``configs/`` are the ones read). The sides alternate (trainer, bare, bare, trainer, ...) so the machine's drift falls on both. Overhead is
1 - trainer / bare. Works on the commits before the loop stopped waiting for every step too (``--tag=before``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import format_table, make_parser, write_result

GIN_FILE = "configs/pretrain_tiny_cpu.gin"
INPUTS, TARGETS, BATCH = 128, 32, 32


def _batches(n: int = 4, seed: int = 0) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        inputs = rng.integers(3, 28, (BATCH, INPUTS)).astype(np.int32)
        targets = rng.integers(3, 144, (BATCH, TARGETS)).astype(np.int32)
        dec_in = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
        out.append({"encoder_input_tokens": inputs, "decoder_input_tokens": dec_in,
                    "decoder_target_tokens": targets, "decoder_loss_weights": np.ones((BATCH, TARGETS), np.float32)})
    return out


class Prefetched:
    """Host batches cycled, with the resumable iterator's interface the trainer checkpoints."""

    def __init__(self, batch_size, shard_id, **_):
        self.batches, self.i, self.shard_id = _batches(), 0, shard_id

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]

    def get_state(self):
        return {"position": self.i, "epoch": 0, "row": 0, "config": {"shard_id": self.shard_id, "num_shards": 1}}

    def set_state(self, state):
        self.i = state["position"]


def prefetched_input(task_name, split, **kwargs):
    return Prefetched(**kwargs)


def _new_api() -> bool:
    import importlib.util

    return importlib.util.find_spec("ankh_jax.training.run_config") is not None


def _flags(steps: int, model_dir: str) -> list[str]:
    common = [f"--gin_file={GIN_FILE}", "--gin_search_paths=configs", f"--gin.INPUTS_LENGTH={INPUTS}", f"--gin.BATCH_SIZE={BATCH}",
              f"--gin.TRAIN_STEPS={steps}", "--gin.WARMUP_STEPS=1", f"--gin.MODEL_DIR='{model_dir}'"]
    if _new_api():
        return common + ["--gin.DataConfig.input_fn=@prefetched_input", f"--gin.LoopConfig.log_every_steps={steps}",
                         "--gin.LoopConfig.progress_bar=False", "--gin.LoopConfig.draw_plots=False",
                         f"--gin.CheckpointConfig.every_steps={steps}", "--gin.EvalConfig.every_steps=0"]
    return common + ["--gin.train.input_fn=@prefetched_input", f"--gin.train.log_every_steps={steps}",
                     "--gin.train.progress_bar=False", "--gin.train.draw_plots=False",
                     f"--gin.train.checkpoint_every_steps={steps}", "--gin.train.eval_every_steps=0"]


def trainer_rate(steps: int) -> float:
    import gin

    from ankh_jax.train import main
    from ankh_jax.training.metrics import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "run")
        gin.clear_config()
        code = main(_flags(steps, model_dir))
        if code != 0:
            raise SystemExit(f"bench_train_loop: the trainer exited {code}")
        (row,) = [r for r in read_metrics(model_dir) if r["kind"] == "train"]
        return float(row["steps_per_s"])


def bare_rate(steps: int) -> float:
    import gin
    import jax

    from ankh_jax import flags
    from ankh_jax.train import GIN_MODULES
    from ankh_jax.training.partitioning import Partitioner
    from ankh_jax.training.program import build_program

    gin.clear_config()
    flags.parse_gin([GIN_FILE], [b.partition("--gin.")[2].replace("=", " = ", 1) for b in _flags(steps, "/unused")
                                 if b.startswith("--gin.")], ["configs"], modules=GIN_MODULES)
    partitioner = Partitioner()
    if _new_api():
        from ankh_jax.training.run_config import ProgramConfig

        program = build_program(ProgramConfig(), partitioner)
    else:
        program = build_program(_model_config(), partitioner)  # the signature before the settings dataclasses
    batches, rng = _batches(), jax.random.key(1)
    state = program.layout.create(jax.random.key(0))
    state, m = program.train_step(state, partitioner.make_global_batch(batches[0]), rng)
    jax.block_until_ready(m)
    started = time.perf_counter()
    for i in range(1, steps):
        state, m = program.train_step(state, partitioner.make_global_batch(batches[i % len(batches)]), rng)
    jax.block_until_ready((state, m))
    return (steps - 1) / (time.perf_counter() - started)


def _model_config():
    import copy

    import gin

    return copy.deepcopy(gin.query_parameter("train.model_config"))


def main() -> None:
    parser = make_parser(__doc__, quick_help="20 steps, 1 round")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 20, 1
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import gin

    gin.external_configurable(prefetched_input, "prefetched_input")
    measured = {"trainer": [], "bare": []}
    for r in range(args.rounds):
        for side in (("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")):
            rate = trainer_rate(args.steps) if side == "trainer" else bare_rate(args.steps)
            measured[side].append(rate)
            print(f"round {r + 1}: {side} {rate:.2f} steps/s", flush=True)
    trainer, bare = (sum(v) / len(v) for v in (measured["trainer"], measured["bare"]))
    overhead = 1 - trainer / bare
    head = ["side", "steps/s (mean)", "runs"]
    rows = [["trainer", round(trainer, 3), [round(x, 3) for x in measured["trainer"]]],
            ["bare jitted step", round(bare, 3), [round(x, 3) for x in measured["bare"]]],
            ["loop overhead", f"{100 * overhead:.1f}%", ""]]
    print(format_table(head, rows))
    import ankh_jax

    measured_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.dirname(ankh_jax.__file__)),
                              capture_output=True, text=True, check=False).stdout.strip()
    write_result("bench_train_loop", "cpu", head=head, rows=rows, settings=vars(args), quick=args.quick,
                 out_dir=args.out_dir, overhead=overhead, batch=BATCH, inputs_length=INPUTS,
                 measured_ankh_jax_commit=measured_commit)  # the checkout whose ankh_jax ran (may differ from the script's)


if __name__ == "__main__":
    main()
