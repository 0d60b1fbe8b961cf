"""Speed levers of the train step, each measured: XLA:CPU flags, and formulations of attention and the MLP.

    python scripts/bench_levers.py                 # both parts, bench_train.py's default shapes, CPU
    python scripts/bench_levers.py --skip_flags    # only the formulations (a few minutes less)

Part 1, ``flags``: ``bench_train.py``'s ankh_jax step (its real jitted train step, no torch, no breakdown) in one
subprocess per ``XLA_FLAGS`` setting (``--flag_sets``, ``;``-separated; the empty set is the baseline), the
settings in the order given and then again in reverse, so drift in the machine's load shows as two different
numbers for one setting rather than as a lever. Each row: the median step of each pass and the change of their
mean against the baseline's.

Part 2, ``formulations``: forward + backward of one piece of a layer at the encoder's bench shapes (batch 8 x 256,
d_model 384, 6 heads x 64, d_ff 1536; float32), each variant jitted alone and timed interleaved with the others
(``--rounds`` rounds of ``--repeats`` calls; the 25th percentile is reported). Every variant's gradients are
checked against the first variant of its piece (largest relative difference, reported), so a faster variant that
computes something else cannot pass unnoticed:

  * attention (projections, scores, softmax, mix, output projection; bias = position bias + key mask):
    ``softmax, then mix`` (``jax.nn.softmax``, the model before this lever), ``mix, then normalise`` (the model
    now: ``layers.MultiHeadAttention._softmax_mix``), ``query, key, value as three matmuls`` (the model joins
    them into one), ``bias as two terms per layer`` (position bias
    ``[1, h, q, k]`` and key mask ``[b, 1, 1, k]`` added per layer instead of one ``[b, h, q, k]`` sum) and
    ``[b, l, h, d] einsums`` (no transposes to ``[b, h, l, d]``; XLA picks its own);
  * gated MLP: ``two input kernels`` (the model), ``one joined [d, 2 d_ff] kernel`` and ``weight gradients from a
    transposed copy`` (a custom VJP whose ``dW = copy(x^T) @ dy``: XLA:CPU sends ``x^T @ dy`` to its Eigen dot,
    a plain ``[m, k] @ [k, n]`` to its YNNPACK one).

Writes benchmarks/results/bench_levers-<device>-<date>.json through ``bench_common``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

REPO = bench_common.REPO

DEFAULT_FLAG_SETS = (
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)


def parse_args(argv):
    p = bench_common.make_parser(__doc__, quick_help="two flag settings on a 64-wide model, small formulation shapes")
    p.add_argument("--flag_sets", default=";".join(DEFAULT_FLAG_SETS), help="';'-separated XLA_FLAGS values; '' = baseline")
    p.add_argument("--steps", type=int, default=6, help="timed train steps per flag setting and pass")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip_flags", action="store_true")
    p.add_argument("--skip_formulations", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.flag_sets, args.steps, args.rounds, args.repeats = ";--xla_cpu_use_xnnpack=true", 1, 1, 1
    return args


def _train_step_ms(flags: str, args) -> tuple[float, float]:
    """(median step ms, loss) of bench_train.py's jax side under ``XLA_FLAGS=flags``, in a fresh process."""
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, os.path.join(REPO, "scripts", "bench_train.py"), "--device=cpu", "--skip_torch",
               "--skip_breakdown", "--skip_data", f"--steps={args.steps}", f"--out_dir={out_dir}"]
        if args.quick:
            cmd.append("--quick")
        env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode:
            raise SystemExit(f"bench_levers: bench_train.py failed under XLA_FLAGS={flags!r}:\n{out.stderr[-2000:]}")
        (path,) = (os.path.join(out_dir, name) for name in os.listdir(out_dir))
        with open(path) as f:
            raw = json.load(f)["raw"]["ankh_jax (jax/flax)"]
    return 1e3 * raw["step_s"], raw["loss"]


def flag_rows(args):
    sets = args.flag_sets.split(";")
    times: dict[str, list[float]] = {s: [] for s in sets}
    losses = {}
    for flags in sets + sets[::-1]:
        ms, losses[flags] = _train_step_ms(flags, args)
        times[flags].append(ms)
        print(f"  XLA_FLAGS={flags or '(none)'}: {ms:.1f} ms", flush=True)
    base = sum(times[sets[0]]) / len(times[sets[0]])
    rows = []
    for flags in sets:
        mean = sum(times[flags]) / len(times[flags])
        rows.append([flags or "(none: baseline)", " / ".join(f"{t:.0f}" for t in times[flags]),
                     f"{100 * (mean / base - 1):+.1f}%", round(losses[flags], 4)])
    return ["XLA_FLAGS", "step ms (pass 1 / pass 2)", "vs baseline", "loss"], rows


# ---------------------------------------------------------------------------------------------- formulations
def _attention_variants(jnp, jax, heads, d_kv):
    def project(x, w):  # one joined q/k/v matmul, as the model runs it
        b, n, d = x.shape
        return (x.reshape(-1, d) @ w.reshape(d, -1)).reshape(b, n, 3, heads, d_kv)

    def finish(o, wo):  # [b, l, h, d] -> output projection
        b, n = o.shape[:2]
        return (o.reshape(b * n, -1) @ wo.reshape(-1, wo.shape[-1])).reshape(b, n, -1)

    def softmax_then_mix(x, w, wo, pos, mask):
        y = project(x, w)
        q, k, v = (jnp.swapaxes(y[:, :, i], 1, 2) for i in range(3))
        probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k) + (pos + mask), axis=-1)
        return finish(jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", probs, v), 1, 2), wo)

    def normalise_after(logits, v, mix):
        shifted = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
        return jnp.einsum(mix, shifted, v), shifted.sum(-1, keepdims=True)

    def project_apart(x, w):  # three matmuls, one per kernel
        b, n, d = x.shape
        return jnp.stack([(x.reshape(-1, d) @ w[:, i].reshape(d, -1)).reshape(b, n, heads, d_kv)
                          for i in range(3)], axis=2)

    def mix_then_normalise(x, w, wo, pos, mask, two_terms=False, apart=False):
        y = (project_apart if apart else project)(x, w)
        q, k, v = (jnp.swapaxes(y[:, :, i], 1, 2) for i in range(3))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        logits = logits + pos + mask[:, :, :1] if two_terms else logits + (pos + mask)
        mixed, total = normalise_after(logits, v, "bhqk,bhkd->bhqd")
        return finish(jnp.swapaxes(mixed / total, 1, 2), wo)

    def blhd(x, w, wo, pos, mask):
        y = project(x, w)
        q, k, v = (y[:, :, i] for i in range(3))
        mixed, total = normalise_after(jnp.einsum("bqhd,bkhd->bhqk", q, k) + (pos + mask), v, "bhqk,bkhd->bqhd")
        return finish(mixed / jnp.swapaxes(total, 1, 2), wo)

    return {"softmax, then mix (before)": softmax_then_mix, "mix, then normalise (the model now)": mix_then_normalise,
            "query, key, value as three matmuls": functools.partial(mix_then_normalise, apart=True),
            "bias as two terms per layer": functools.partial(mix_then_normalise, two_terms=True),
            "[b, l, h, d] einsums": blhd}


def _mlp_variants(jnp, jax):
    gelu = functools.partial(jax.nn.gelu, approximate=True)

    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    def fwd(x, w):
        return x @ w, (x, w)

    def bwd(res, g):
        x, w = res
        return g @ w.T, jax.lax.optimization_barrier(x.T) @ g

    matmul.defvjp(fwd, bwd)

    def separate(x, w0, w1, wo, mm=jnp.matmul):
        return mm(gelu(mm(x, w0)) * mm(x, w1), wo)

    def joined(x, w0, w1, wo):
        y = x @ jnp.concatenate([w0, w1], axis=1)
        half = w0.shape[1]
        return (gelu(y[:, :half]) * y[:, half:]) @ wo

    return {"two input kernels (the model)": separate, "one joined [d, 2 d_ff] kernel": joined,
            "weight gradients from a transposed copy": functools.partial(separate, mm=matmul)}


def _time_interleaved(fns: dict, inputs, rounds: int, repeats: int) -> dict[str, float]:
    import jax

    times = {name: [] for name in fns}
    for fn in fns.values():
        jax.block_until_ready(fn(*inputs))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn(*inputs))
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(t)[len(t) // 4] for name, t in times.items()}


def formulation_rows(args):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    b, n, d, h, dk, f = (2, 64, 64, 2, 32, 128) if args.quick else (8, 256, 384, 6, 64, 1536)
    keys = iter(jax.random.split(jax.random.key(0), 32))

    def normal(*shape, scale=1.0):
        return scale * jax.random.normal(next(keys), shape, jnp.float32)

    x = normal(b, n, d)
    mask = jnp.where(jnp.arange(n) < n - n // 16, 0.0, -1e10)[None, None, None, :] * jnp.ones((b, 1, n, 1))
    pieces = {
        "attention": (_attention_variants(jnp, jax, h, dk),
                      (x, normal(d, 3, h, dk, scale=d ** -0.5), normal(h, dk, d, scale=(h * dk) ** -0.5),
                       normal(1, h, n, n), mask), 4),
        "gated MLP": (_mlp_variants(jnp, jax),
                      (x.reshape(b * n, d), normal(d, f, scale=d ** -0.5), normal(d, f, scale=d ** -0.5),
                       normal(f, d, scale=f ** -0.5)), 4),
    }
    rows = []
    for piece, (variants, inputs, n_grads) in pieces.items():
        fns, grads = {}, {}
        cotangent = normal(*jax.eval_shape(next(iter(variants.values())), *inputs).shape)  # one for every variant
        for name, fn in variants.items():
            fns[name] = jax.jit(jax.grad(lambda *a, fn=fn, c=cotangent: jnp.sum(fn(*a) * c),
                                         argnums=tuple(range(n_grads))))
            grads[name] = fns[name](*inputs)
        ms = _time_interleaved(fns, inputs, args.rounds, args.repeats)
        first = next(iter(variants))
        for name in variants:
            diff = max(float(jnp.abs(a - r).max() / jnp.abs(r).max()) for a, r in zip(grads[name], grads[first]))
            rows.append([piece, name, round(ms[name], 2), f"{100 * (ms[name] / ms[first] - 1):+.1f}%",
                         f"{diff:.1e}"])
            print(f"  {piece}: {name}: {ms[name]:.2f} ms", flush=True)
    return ["piece", "variant (forward + backward)", "ms", "vs first", "max rel. gradient diff"], rows


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    extra, head, rows = {}, None, []
    if not args.skip_flags:
        print("XLA:CPU flags on bench_train.py's step (each setting twice, in opposite orders):", flush=True)
        head, rows = flag_rows(args)
        print("\n" + bench_common.format_table(head, rows) + "\n")
        extra["flags"] = [dict(zip(head, r)) for r in rows]
    if not args.skip_formulations:
        print("formulations (forward + backward, encoder bench shapes):", flush=True)
        f_head, f_rows = formulation_rows(args)
        print("\n" + bench_common.format_table(f_head, f_rows))
        extra["formulations"] = [dict(zip(f_head, r)) for r in f_rows]
        if head is None:
            head, rows = f_head, f_rows
    if head is None:
        raise SystemExit("bench_levers: both parts skipped; nothing to measure")
    bench_common.write_result("bench_levers", "cpu", head=head, rows=rows, settings=vars(args), quick=args.quick,
                              out_dir=args.out_dir, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
