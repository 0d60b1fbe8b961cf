"""Prints what `make demo` produced: the loss curve, checkpoints, the HF export and the embeddings.

Reads only files (metrics.jsonl, the checkpoint folder, the export's config.json, the HDF5 embeddings), so it
works on any finished run directory.
"""

import argparse
import json
import os
import sys

import h5py
import numpy as np


def _metrics(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return path, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--hf_dir", required=True)
    p.add_argument("--embeddings", required=True)
    args = p.parse_args(argv)

    path, rows = _metrics(args.model_dir)
    train = [r for r in rows if r.get("kind", "train") == "train" and "loss" in r]
    evals = [r for r in rows if r.get("kind") == "eval"]
    print("\n=== ankh_jax demo summary ===")
    if train:
        first, last = train[0], train[-1]
        print(f"pretraining: {len(train)} logged steps; loss {first['loss']:.3f} (step {first['step']}) -> "
              f"{last['loss']:.3f} (step {last['step']})")
        acc = [r for r in train if "accuracy" in r]
        if acc:
            print(f"masked-token accuracy {acc[0]['accuracy']:.3f} -> {acc[-1]['accuracy']:.3f}")
    if evals:
        e = evals[-1]
        shown = {k: round(v, 4) for k, v in e.items() if isinstance(v, float)}
        print(f"last eval (step {e.get('step')}): {shown}")
    print(f"metrics:      {path}")
    ckpt_dir = os.path.join(args.model_dir, "checkpoints")
    if os.path.isdir(ckpt_dir):
        steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
        print(f"checkpoints:  {ckpt_dir} (steps {steps})")
    print(f"tensorboard:  tensorboard --logdir {args.model_dir}")
    with open(os.path.join(args.hf_dir, "config.json")) as f:
        cfg = json.load(f)
    print(f"HF export:    {args.hf_dir} (d_model {cfg['d_model']}, {cfg['num_layers']}+{cfg['num_decoder_layers']} "
          f"layers; load with transformers.T5ForConditionalGeneration.from_pretrained)")
    with h5py.File(args.embeddings, "r") as h5:
        names = list(h5.keys())
        vecs = np.stack([h5[n][()] for n in names])
        attrs = dict(h5.attrs)
    print(f"embeddings:   {args.embeddings}: {len(names)} proteins x {vecs.shape[1]} dims "
          f"(pooling={attrs.get('pooling')}), finite={bool(np.isfinite(vecs).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
