"""Packing measured: ``DataConfig.pack = True`` against ``False`` on the shipped sample (``make demo``'s tiny Ankh).

    python scripts/bench_packing.py [--inputs_length=512] [--steps=120] [--batch=16] [--tag=...]

1. Fill: the non-padding share of input and target tokens, and the target (masked) tokens per batch, over the
   first 20 training batches of each pipeline (seqio's packing: several proteins per row, segment ids).
2. Training for the same number of target tokens: ``--steps`` unpacked steps, and as many packed steps as carry
   the same number of target tokens (fewer: each packed row holds more). Both runs then evaluate the masked-token
   accuracy on the whole validation split (each in its own layout; the accuracy is token-weighted either way).
3. Non-padding tokens per second: the trainer's own ``nonpad_tokens_per_s`` (input + target tokens that are not
   padding, per second of training steps), the mean of its log rows after the first.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import REPO, fake_cpu_devices, format_table, make_parser, write_result

GIN_FILE = os.path.join(REPO, "configs", "pretrain_tiny_cpu.gin")


def _bindings(inputs_length: int, batch: int) -> list[str]:
    return [f"INPUTS_LENGTH = {inputs_length}", f"BATCH_SIZE = {batch}", "make_input.shuffle_buffer_size = 2000"]


def fill(pack: bool, inputs_length: int, batch: int, batches: int = 20) -> dict:
    import gin
    import numpy as np

    from ankh_jax import flags
    from ankh_jax.data.input_pipeline import make_input
    from ankh_jax.train import GIN_MODULES

    gin.clear_config()
    flags.parse_gin([GIN_FILE], _bindings(inputs_length, batch) + ["MODEL_DIR = '/unused'"], modules=GIN_MODULES)
    it = make_input("uniref50_ankh", "train", feature_lengths={"inputs": inputs_length}, batch_size=batch,
                    pack=pack, shard_id=0, num_shards=1)
    sums = np.zeros(5)
    for _ in range(batches):
        b = next(it)
        sums += [np.sum(b["encoder_input_tokens"] != 0), b["encoder_input_tokens"].size,
                 np.sum(b["decoder_target_tokens"] != 0), b["decoder_target_tokens"].size,
                 np.sum(b["decoder_loss_weights"])]
    return {"input_fill": sums[0] / sums[1], "target_fill": sums[2] / sums[3], "target_tokens_per_batch": sums[4] / batches}


def train(pack: bool, steps: int, inputs_length: int, batch: int, model_dir: str) -> dict:
    import gin

    from ankh_jax.train import main
    from ankh_jax.training.metrics import read_metrics

    gin.clear_config()
    flags = [f"--gin_file={GIN_FILE}", f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
             f"--gin.WARMUP_STEPS={max(steps // 10, 1)}", f"--gin.DataConfig.pack={pack}",
             "--gin.LoopConfig.log_every_steps=10", "--gin.LoopConfig.progress_bar=False",
             "--gin.LoopConfig.draw_plots=False", f"--gin.CheckpointConfig.every_steps={steps}",
             f"--gin.EvalConfig.every_steps={steps}", "--gin.EvalConfig.steps=None"]
    flags += ["--gin." + b.replace(" = ", "=") for b in _bindings(inputs_length, batch)]
    if main(flags) != 0:
        raise SystemExit(f"bench_packing: the trainer failed (pack={pack})")
    rows = read_metrics(model_dir)
    train_rows = [r for r in rows if r["kind"] == "train"]
    (evaluation,) = [r for r in rows if r["kind"] == "eval"]
    timed = train_rows[1:] or train_rows
    return {"steps": steps, "target_tokens_seen": sum(r["target_tokens"] for r in train_rows),
            "input_fill": sum(r["input_fill"] for r in train_rows) / len(train_rows),
            "target_fill": sum(r["target_fill"] for r in train_rows) / len(train_rows),
            "nonpad_tokens_per_s": sum(r["nonpad_tokens_per_s"] for r in timed) / len(timed),
            "steps_per_s": sum(r["steps_per_s"] for r in timed) / len(timed),
            "eval_accuracy": evaluation["accuracy"], "eval_loss": evaluation["loss"]}


def main() -> None:
    parser = make_parser(__doc__, quick_help="10 unpacked steps, 128-token inputs")
    parser.add_argument("--inputs_length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=120, help="unpacked steps (packed: the same target tokens)")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.inputs_length = 10, 128
    fake_cpu_devices(8)
    os.chdir(REPO)
    fills = {pack: fill(pack, args.inputs_length, args.batch) for pack in (False, True)}
    steps = {False: args.steps,
             True: max(1, round(args.steps * fills[False]["target_tokens_per_batch"]
                                / fills[True]["target_tokens_per_batch"]))}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pack in (False, True):
            runs[pack] = train(pack, steps[pack], args.inputs_length, args.batch, os.path.join(tmp, f"pack{pack}"))
            print(f"pack={pack}: {runs[pack]}", flush=True)
    head = ["pack", "input fill", "target fill", "steps", "target tokens seen", "non-padding tokens/s",
            "masked-token accuracy (validation)", "validation loss"]
    rows = [[pack, round(fills[pack]["input_fill"], 3), round(fills[pack]["target_fill"], 3), runs[pack]["steps"],
             int(runs[pack]["target_tokens_seen"]), round(runs[pack]["nonpad_tokens_per_s"]),
             round(runs[pack]["eval_accuracy"], 4), round(runs[pack]["eval_loss"], 4)] for pack in (False, True)]
    print(format_table(head, rows))
    write_result("bench_packing", "cpu", head=head, rows=rows, settings=vars(args), quick=args.quick,
                 out_dir=args.out_dir, fills={str(k): v for k, v in fills.items()},
                 runs={str(k): v for k, v in runs.items()})


if __name__ == "__main__":
    main()
