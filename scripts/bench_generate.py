"""Decoder speed: ankh_jax generation and pseudo-likelihood vs HF transformers (PyTorch), same random weights.

    python scripts/bench_generate.py                       # CPU, Ankh Base width, 2 + 2 layers, small settings
    python scripts/bench_generate.py --device=gpu --dtype=bfloat16 --num_layers=4

One random encoder-decoder of Ankh Base width (d_model 768, 12 heads x 64, d_ff 3072; --num_layers encoder and
decoder layers) is written as a HF directory; each framework then runs in its own subprocess:

  * generation: new tokens/s at batch 1 and --batch_size, greedy and sampling (temperature 1, no top-k/top-p),
    inputs = the first shipped proteins cut to --input_length residues, exactly --max_new_tokens new tokens
    (``min_new_tokens`` = ``max_new_tokens`` in both, so neither stops early); ankh_jax ``decoding.generate``
    (KV cache, one jitted while_loop, compiled before timing) vs ``T5ForConditionalGeneration.generate``
    (its KV cache, ``torch.no_grad``);
  * pseudo-likelihood: proteins/s over --pll_proteins shipped proteins of at most --pll_max_length residues
    (a seeded random subset); ankh_jax ``scoring.pseudo_likelihood`` (length buckets, token budget) vs PyTorch
    running Ankh's definition the way the upstream function batches it: per protein, the L masked copies in
    batches of --torch_pll_batch, decoder inputs ``[0, <extra_id_0>]``.

Prints a table (and the largest PLL difference between the two) and writes it, with the command, the commit,
versions and the CPU, to benchmarks/results/bench_generate-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

REPO = bench_common.REPO


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="1 layer, batch 2, 8 new tokens, 2 proteins of <= 80 for PLL")
    p.add_argument("--num_layers", type=int, default=2, help="encoder and decoder depth (Ankh Base: 48 / 24)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--input_length", type=int, default=64)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--pll_proteins", type=int, default=8)
    p.add_argument("--pll_max_length", type=int, default=96)
    p.add_argument("--torch_pll_batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the best is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.num_layers, args.batch_size, args.input_length, args.max_new_tokens = 1, 2, 16, 8
        args.pll_proteins, args.pll_max_length, args.repeats = 2, 80, 1
    return args


def proteins(args):
    from ankh_jax.data.fasta import load_fasta

    records = load_fasta(os.path.join(REPO, "data", "sample_proteins.fasta"))
    inputs = [r.sequence[: args.input_length] for r in records[: args.batch_size]]
    short = [r.sequence for r in records if len(r.sequence) <= args.pll_max_length]
    keep = np.sort(np.random.default_rng(args.seed).permutation(len(short))[: args.pll_proteins])
    return inputs, [short[i] for i in keep]


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: compilation (jax), allocator and kernels (torch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def settings(args):
    return [(b, s) for b in (1, args.batch_size) for s in ("greedy", "sample")]


def jax_worker(args, workdir: str) -> dict:
    import jax

    if args.device == "gpu":
        jax.config.update("jax_default_matmul_precision", "highest")
    from ankh_jax.data.tokenizer import AnkhTokenizer
    from ankh_jax.inference import decoding, scoring
    from ankh_jax.io import hf_files

    config, params = hf_files.load_hf_model(workdir + "/model")
    config = decoding.decoding_config(config, args.dtype)
    prepared = decoding.prepare_params(config, params)
    inputs, pll_seqs = proteins(args)
    result = {"device": str(jax.devices()[0]), "generate": {}}
    for batch, strategy in settings(args):
        ids = AnkhTokenizer().batch_encode(inputs[:batch])[0]
        n = args.max_new_tokens

        def run(ids=ids, strategy=strategy, n=n):
            return decoding.generate(config, prepared, ids, max_new_tokens=n, min_new_tokens=n, strategy=strategy,
                                     seed=1, prepared=True)

        result["generate"][f"{strategy}/{batch}"] = batch * n / best_time(run, args.repeats)
    pll = {}

    def run_pll():
        pll["values"] = scoring.pseudo_likelihood(config, prepared, pll_seqs).tolist()

    result["pll_proteins_per_s"] = len(pll_seqs) / best_time(run_pll, args.repeats)
    result["pll"] = pll["values"]
    return result


def torch_worker(args, workdir: str) -> dict:
    import torch
    import transformers

    from ankh_jax.data.tokenizer import AnkhTokenizer

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    model = transformers.T5ForConditionalGeneration.from_pretrained(workdir + "/model", dtype=dtype).to(device).eval()
    inputs, pll_seqs = proteins(args)
    tok = AnkhTokenizer()
    result = {"device": str(device), "threads": torch.get_num_threads(), "generate": {}}

    def sync():
        if args.device == "gpu":
            torch.cuda.synchronize()

    for batch, strategy in settings(args):
        ids, mask = tok.batch_encode(inputs[:batch])
        ids = torch.tensor(ids, dtype=torch.long, device=device)
        mask = torch.tensor(mask, device=device)
        n = args.max_new_tokens
        extra = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0} if strategy == "sample" else {
            "do_sample": False}

        def run(ids=ids, mask=mask, n=n, extra=extra):
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **extra)
            sync()

        result["generate"][f"{strategy}/{batch}"] = batch * n / best_time(run, args.repeats)
    special = [i for i in range(144) if not 3 <= i < 28]
    values = []

    def run_pll():
        values.clear()
        for seq in pll_seqs:
            ids = tok.encode(seq)
            total = 0.0
            for start in range(0, len(seq), args.torch_pll_batch):
                pos = np.arange(start, min(len(seq), start + args.torch_pll_batch))
                enc = np.repeat(ids[None], len(pos), axis=0)
                enc[np.arange(len(pos)), pos] = 143
                dec = np.tile([[0, 143]], (len(pos), 1))
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor(enc, dtype=torch.long, device=device),
                                   decoder_input_ids=torch.tensor(dec, dtype=torch.long, device=device)).logits
                logits = logits[:, -1].float()
                logits[:, special] = -float("inf")
                lp = torch.log_softmax(logits, dim=-1).cpu().numpy()
                total += float(lp[np.arange(len(pos)), ids[pos]].sum())
            values.append(float(np.exp(total / len(seq))))
        sync()

    result["pll_proteins_per_s"] = len(pll_seqs) / best_time(run_pll, args.repeats)
    result["pll"] = list(values)
    return result


def build_model(args, workdir: str) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from ankh_jax.io import hf_export
    from ankh_jax.model import T5Config, Transformer

    config = T5Config.ankh_base(num_encoder_layers=args.num_layers, num_decoder_layers=args.num_layers)
    x = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(Transformer(config).init(jax.random.PRNGKey(args.seed), x, x)["params"])
    hf_export.export(config, params, workdir + "/model", source="random init")
    return {"d_model": config.d_model, "num_heads": config.num_heads, "d_ff": config.d_ff,
            "encoder_layers": args.num_layers, "decoder_layers": args.num_layers}


def spawn(args, workdir: str, worker: str) -> dict:
    env = dict(os.environ)
    if args.device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("JAX_PLATFORMS", None)
    env.pop("XLA_FLAGS", None)  # one CPU device using every core
    cmd = [sys.executable, os.path.abspath(__file__), f"--_worker={worker}", f"--_workdir={workdir}"]
    cmd += [a for a in sys.argv[1:] if not a.startswith("--_")]
    subprocess.run(cmd, env=env, check=True)
    with open(os.path.join(workdir, f"{worker}.json")) as f:
        return json.load(f)


def main() -> None:
    args = parse_args()
    if args._worker:
        fn = jax_worker if args._worker == "jax" else torch_worker
        result = fn(args, args._workdir)
        with open(os.path.join(args._workdir, f"{args._worker}.json"), "w") as f:
            json.dump(result, f)
        return
    with tempfile.TemporaryDirectory() as workdir:
        model = build_model(args, workdir)
        ours, ref = spawn(args, workdir, "jax"), spawn(args, workdir, "torch")
    rows = []
    for key in ours["generate"]:
        strategy, batch = key.split("/")
        a, b = ours["generate"][key], ref["generate"][key]
        rows.append([f"generate {strategy}, batch {batch}", "new tokens/s", round(a, 1), round(b, 1),
                     round(a / b, 2)])
    a, b = ours["pll_proteins_per_s"], ref["pll_proteins_per_s"]
    rows.append([f"pseudo-likelihood, {args.pll_proteins} proteins <= {args.pll_max_length}", "proteins/s",
                 round(a, 3), round(b, 3), round(a / b, 2)])
    pll_rel = float(np.max(np.abs(np.array(ours["pll"]) - ref["pll"]) / np.abs(ref["pll"])))
    head = ["benchmark", "unit", "ankh_jax", "torch", "speed-up"]
    print(bench_common.format_table(head, rows))
    print(f"pseudo-likelihood max relative difference ankh_jax vs torch: {pll_rel:.2e}")
    bench_common.write_result("bench_generate", "cpu" if args.device == "cpu" else "gpu", head=head, rows=rows,
                              settings=vars(args), out_dir=args.out_dir, quick=args.quick,
                              jax_device=ours["device"], torch_device=ref["device"],
                              torch_threads=ref.get("threads"), dtype=args.dtype, model=model,
                              pll_max_relative_difference=pll_rel, raw={"ankh_jax": ours, "torch": ref})

if __name__ == "__main__":
    main()
