"""Train-step throughput: ankh_jax vs HF transformers' PyTorch T5ForConditionalGeneration, same shapes, one run.

    python scripts/bench_train.py [--device=auto|cpu|gpu] [--steps=10] [--batch=8] [--inputs=256] [--targets=104]
        [--d_model=384] [--layers=6,3] [--heads=6] [--d_ff=1536] [--skip_torch] [--skip_data] [--skip_breakdown]
        [--quick]

Both sides train the same Ankh-shaped model (gated-GELU T5, untied head, relative attention 64/128, vocab 144)
on the same fixed batch of synthetic span-corruption-shaped tokens (no padding), with Adafactor: ankh_jax's real
jitted train step (``ankh_jax.training.steps``, optax Adafactor with parameter scaling, like the pretraining
configs) and a plain PyTorch loop (forward with labels, backward, ``transformers.optimization.Adafactor(lr=1e-3,
scale_parameter=True, relative_step=False)``, zero_grad). Each side runs ``--warmup`` untimed steps; then
``--steps`` timed ones per side (each synchronised, as the trainer does: jax reads the step's metrics, torch
.item()) alternate between the sides in ``--blocks`` blocks (A B B A ...; steps rounded up to fill the blocks), so
a shared machine that slows down mid-run slows both sides alike; each side's median step is reported.

MFU = model FLOPs per step / step time / peak. Model FLOPs (see ankh_jax/training/flops.py for the derivation): one forward
is, per token, 2 x (matmul parameters touched) plus attention scores and mixing, i.e.

    B*Le*Ne*(8*d*a + 6*d*f + 4*Le*a) + B*Ld*Nd*(12*d*a + 6*d*f + 2*Ld*a + 4*Le*a) + B*Le*Nd*4*d*a + B*Ld*2*d*V

(a = heads*d_kv, f = d_ff, V = vocab; causal self-attention counted at half) and a train step is 3x that. The
peak is a float32 2048x2048 matmul measured in this run, in jax and in torch on the same device (on a GPU
both use TF32 tensor cores for float32 matmuls: XLA's default, and torch's allow_tf32 set here).

Also the ankh_jax step by part (``bench_train_parts.py``: attention, feed-forward, loss and optimizer each jitted
alone at the bench shapes, the rest by difference) and (unless --skip_data) the input pipeline's examples/s with
TensorFlow limited to one thread. The table, breakdown and settings go to
benchmarks/results/bench_train-<device>-<date>.json (``bench_common``).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path


def parse_args(argv):
    p = bench_common.make_parser(__doc__, quick_help="a 64-wide 2+1-layer model, batch 2 x 64/32, 2 steps, no data")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--blocks", type=int, default=4,
                   help="the timed steps of the two sides alternate in this many blocks (A B B A ...)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=256)
    p.add_argument("--targets", type=int, default=104)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--layers", default="6,3", help="encoder,decoder layers")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--d_kv", type=int, default=64)
    p.add_argument("--d_ff", type=int, default=1536)
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--skip_data", action="store_true")
    p.add_argument("--skip_breakdown", action="store_true", help="no per-part timing (attention, MLP, ...)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch, args.inputs, args.targets = 2, 1, 2, 64, 32
        args.d_model, args.layers, args.heads, args.d_kv, args.d_ff = 64, "2,1", 2, 32, 128
        args.skip_data = True
    return args


def make_batch(args, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    b, le, ld = args.batch, args.inputs, args.targets
    inputs = rng.integers(3, 28, (b, le)).astype(np.int32)
    targets = rng.integers(3, 28, (b, ld)).astype(np.int32)
    sentinels = 143 - np.arange(ld // 2)
    inputs[:, 1:2 * (ld // 2):4] = sentinels[: len(range(1, 2 * (ld // 2), 4))]  # some sentinels in the inputs
    targets[:, 0:2 * (ld // 2):2] = sentinels
    inputs[:, -1] = 1
    targets[:, -1] = 1
    dec_in = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": dec_in, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones((b, ld), np.float32)}


def prepare_jax(args, config, batch, device):
    """ankh_jax's side, compiled and warmed up: ``one_step``, the peak and (unless skipped) the breakdown."""
    import jax

    from ankh_jax.model.network import Transformer
    from ankh_jax.training.flops import measure_matmul_peak
    from ankh_jax.training.optim import make_optimizer, make_schedule
    from ankh_jax.training.partitioning import Partitioner
    from ankh_jax.training.steps import StateLayout, jit_train_step, make_train_step

    model = Transformer(config)
    schedule = make_schedule(peak_learning_rate=1e-3, decay="constant")
    tx = make_optimizer(schedule, name="adafactor", clip_grad_norm=None)
    partitioner = Partitioner(mesh_shape=(1, 1, 1), devices=[device])
    layout = StateLayout(model, tx, partitioner)
    state = layout.create(jax.random.key(0))
    step = jit_train_step(make_train_step(model, tx, schedule), layout)
    rng = jax.random.key(1)
    box = {"state": state}

    def one_step():  # synchronised, as the trainer is: it reads the step's metrics
        box["state"], m = step(box["state"], partitioner.make_global_batch(batch), rng)
        m = jax.device_get(m)
        return float(m["loss_sum"]) / float(m["weight_sum"])

    t = time.perf_counter()
    for _ in range(args.warmup):
        one_step()
    side = {"step": one_step, "warmup_s": time.perf_counter() - t,
            "peak": lambda: measure_matmul_peak(2048, repeats=10, device=device)}
    if not args.skip_breakdown:
        from bench_train_parts import time_parts

        side["parts"] = lambda: time_parts(args, config, tx, box["state"].params, box["state"].opt_state, device)
    return side


def prepare_torch(args, batch, use_cuda):
    """The PyTorch side, warmed up: ``one_step`` (forward with labels, backward, Adafactor step) and the peak."""
    import torch
    import transformers
    from transformers.optimization import Adafactor

    dev = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:  # float32 matmuls on TF32 tensor cores, as XLA:GPU does by default for jax
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    enc_layers, dec_layers = (int(x) for x in args.layers.split(","))
    cfg = transformers.T5Config(
        vocab_size=144, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff, num_layers=enc_layers,
        num_decoder_layers=dec_layers, num_heads=args.heads, relative_attention_num_buckets=64,
        relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(cfg).to(dev).train()
    opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=True, relative_step=False, warmup_init=False)
    tensors = {k: torch.as_tensor(v).to(dev) for k, v in batch.items()}
    input_ids = tensors["encoder_input_tokens"].long()
    labels = tensors["decoder_target_tokens"].long()
    dec_in = tensors["decoder_input_tokens"].long()
    mask = (input_ids != 0).long()

    def one_step():
        out = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec_in, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    t = time.perf_counter()
    for _ in range(args.warmup):
        one_step()
    warm = time.perf_counter() - t

    def peak():
        x = torch.randn(2048, 2048, device=dev)
        best = float("inf")
        for _ in range(10):
            if use_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            (x @ x).sum().item()
            best = min(best, time.perf_counter() - t)
        return 2 * 2048 ** 3 / best

    return {"step": one_step, "warmup_s": warm, "peak": peak, "threads": torch.get_num_threads()}


def time_interleaved(sides: dict, steps: int, blocks: int) -> dict:
    """Times ``steps`` synchronised steps of each side in ``blocks`` blocks, in the order A B B A A B ..., so a
    change of the machine's speed during the run falls on both sides alike; each side's median step and loss."""
    per_block = max(1, -(-steps // blocks))
    times = {name: [] for name in sides}
    loss = {}
    names = list(sides)
    for block in range(blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            for _ in range(per_block):
                t = time.perf_counter()
                loss[name] = sides[name]["step"]()
                times[name].append(time.perf_counter() - t)
    return {name: {"step_s": _median(times[name]), "loss": loss[name], "steps_s": times[name]} for name in sides}


def bench_data(n_batches=40, batch_size=32, inputs=512):
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    import ankh_jax.tasks.pretraining  # noqa: F401

    from ankh_jax.data.input_pipeline import make_input

    it = make_input("uniref50_ankh", "train", feature_lengths={"inputs": inputs}, batch_size=batch_size, seed=0,
                    shuffle=True, repeat=True, shard_id=0, num_shards=1, num_parallel_calls=1)
    next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t)


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from ankh_jax.model.config import T5Config
    from ankh_jax.training.flops import train_step_flops

    if args.device == "gpu":
        device = jax.devices("gpu")[0]
    elif args.device == "cpu":
        device = jax.devices("cpu")[0]
    else:
        device = jax.devices()[0]
    use_cuda = device.platform == "gpu"
    enc_layers, dec_layers = (int(x) for x in args.layers.split(","))
    config = T5Config.ankh_base(d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff, num_heads=args.heads,
                                num_encoder_layers=enc_layers, num_decoder_layers=dec_layers)
    batch = make_batch(args)
    flops = train_step_flops(config, args.batch, args.inputs, args.targets)
    tokens = args.batch * args.targets
    print(f"device: {device.device_kind} ({device.platform}); model d_model {args.d_model}, {enc_layers}+"
          f"{dec_layers} layers, {args.heads}x{args.d_kv} heads, d_ff {args.d_ff}, "
          f"{config.num_params() / 1e6:.1f}M params; batch {args.batch} x {args.inputs} inputs / {args.targets} "
          f"targets; {flops / 1e9:.1f} GFLOP per train step; float32")
    sides = {"ankh_jax (jax/flax)": prepare_jax(args, config, batch, device)}
    if not args.skip_torch:
        sides["HF transformers (PyTorch)"] = prepare_torch(args, batch, use_cuda)
    results = time_interleaved(sides, args.steps, args.blocks)
    for name, side in sides.items():
        results[name].update(peak=side["peak"](), warmup_s=side["warmup_s"])
        if "threads" in side:
            results[name]["threads"] = side["threads"]
        if "parts" in side:
            results[name]["parts_s"] = side["parts"]()
    head = ["framework", "step ms", "target tokens/s", "model GFLOP/s", "f32 matmul peak GFLOP/s (same run)",
            "MFU vs that peak", "loss"]
    rows = []
    for name, r in results.items():
        achieved = flops / r["step_s"]
        rows.append([name, round(1e3 * r["step_s"], 1), round(tokens / r["step_s"]), round(achieved / 1e9, 1),
                     round(r["peak"] / 1e9, 1), f"{100 * achieved / r['peak']:.1f}%", round(r["loss"], 3)])
    print("\n" + bench_common.format_table(head, rows))
    extra = {"model": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "d_kv": args.d_kv,
                       "d_ff": args.d_ff, "params": config.num_params()},
             "train_step_gflop": flops / 1e9, "device_kind": device.device_kind, "raw": results}
    if len(results) == 2:
        (_, a), (_, b) = results.items()
        extra["speedup_vs_pytorch"] = round(b["step_s"] / a["step_s"], 3)
        print(f"\nankh_jax / PyTorch target tokens/s: {b['step_s'] / a['step_s']:.2f}x "
              f"(steps interleaved in {args.blocks} blocks in this run; torch threads: {b['threads']}; warm-up incl. compile: "
              f"jax {a['warmup_s']:.1f} s, torch {b['warmup_s']:.1f} s)")
    parts = results["ankh_jax (jax/flax)"].get("parts_s")
    if parts:
        step_s = results["ankh_jax (jax/flax)"]["step_s"]
        part_rows = [[k, round(1e3 * v, 1), f"{100 * v / step_s:.0f}%"] for k, v in parts.items()]
        part_rows.append(["rest (embeddings, norms, residuals, glue)", round(1e3 * (step_s - sum(parts.values())), 1),
                          f"{100 * (step_s - sum(parts.values())) / step_s:.0f}%"])
        print("\nankh_jax train step by part (each part jitted alone at the bench shapes, forward + backward):\n"
              + bench_common.format_table(["part", "ms", "of step"], part_rows))
        extra["breakdown"] = [dict(zip(["part", "ms", "of step"], r)) for r in part_rows]
    if not args.skip_data:
        extra["input_pipeline_examples_per_s"] = round(bench_data())
        print(f"input pipeline (uniref50_ankh, 512 inputs, TensorFlow on 1 thread): "
              f"{extra['input_pipeline_examples_per_s']} examples/s")
    bench_common.write_result("bench_train", "gpu" if use_cuda else "cpu", head=head, rows=rows,
                              settings=vars(args), out_dir=args.out_dir, quick=args.quick, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
