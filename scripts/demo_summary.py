"""Prints what `make demo` produced (the loss curve, checkpoints, the HF export, the embeddings) and draws
``PLOTS_DIR/embedding_map.png``: the shipped proteins' embeddings coloured by Pfam family, from the demo model and
from a random model of the same shape side by side, with each one's nearest-neighbour family agreement.

The random model is built here (``model_config.json`` of the run, weights drawn with ``--random_seed``): it is
the baseline that says what pretraining bought, not something a user's command line can reach. Everything else
is read from files, so it works on any finished run directory.
"""

import argparse
import json
import os
import sys

import numpy as np

from ankh_jax.plots import embedding_map
from ankh_jax.plots.training import load_training_rows


def random_model_embeddings(model_dir: str, sequences: list[str], seed: int) -> np.ndarray:
    """Mean-pooled embeddings from an encoder of the run's shape (``model_config.json``) with random weights."""
    import jax
    import jax.numpy as jnp

    from ankh_jax.inference.embedding import embed_sequences
    from ankh_jax.model.config import T5Config
    from ankh_jax.model.network import EncoderOnly

    with open(os.path.join(model_dir, "model_config.json")) as f:
        config = T5Config.from_json(f.read())
    params = jax.jit(EncoderOnly(config).init)(jax.random.key(seed), jnp.ones((1, 8), jnp.int32))["params"]
    return np.stack(embed_sequences(config, params, sequences, pooling="mean", progress=True))


def draw_map(args, ids: list[str], vectors: np.ndarray, trained_steps: int) -> None:
    from ankh_jax.data.fasta import load_fasta

    label_files = args.labels.split(",")
    labels = embedding_map.read_labels(label_files)
    records = load_fasta(args.fasta)
    by_id = {r.id: r.sequence for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"error: {args.embeddings} holds ids that {args.fasta} does not, e.g. {missing[:3]}")
    random_vectors = random_model_embeddings(args.model_dir, [by_id[i] for i in ids], args.random_seed)
    panels = [embedding_map.EmbeddingPanel(f"pretrained ({trained_steps} steps)", ids, vectors),
              embedding_map.EmbeddingPanel(f"random weights, same shape (seed {args.random_seed})", ids,
                                           random_vectors)]
    output = os.path.join(args.plots_dir, "embedding_map.png")
    agreements = embedding_map.draw_embedding_maps(panels, output, labels=labels,
                                                   labels_source=args.labels, label_name="Pfam family")
    labelled = [labels[i] for i in ids if i in labels]
    print(f"nearest-neighbour Pfam family agreement over {len(labelled)} proteins "
          f"(chance {embedding_map.chance_agreement(labelled):.3f}):")
    for title, value in agreements.items():
        print(f"  {title:<48s} {value:.3f}")
    print(f"plots:        {args.plots_dir}/ (training.png, embedding_map.png)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--hf_dir", required=True)
    p.add_argument("--embeddings", required=True, help="the demo model's pooled embeddings (HDF5)")
    p.add_argument("--fasta", required=True, help="the proteins those embeddings are of")
    p.add_argument("--labels", required=True, help="CSV file(s), comma-separated, with id and label columns")
    p.add_argument("--plots_dir", required=True)
    p.add_argument("--random_seed", type=int, default=0)
    args = p.parse_args(argv)

    train, evals = load_training_rows(args.model_dir)
    train = [r for r in train if "loss" in r]
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
    print(f"metrics:      {os.path.join(args.model_dir, 'metrics.jsonl')}")
    ckpt_dir = os.path.join(args.model_dir, "checkpoints")
    if os.path.isdir(ckpt_dir):
        steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
        print(f"checkpoints:  {ckpt_dir} (steps {steps})")
    print(f"tensorboard:  tensorboard --logdir {args.model_dir}")
    with open(os.path.join(args.hf_dir, "config.json")) as f:
        cfg = json.load(f)
    print(f"HF export:    {args.hf_dir} (d_model {cfg['d_model']}, {cfg['num_layers']}+{cfg['num_decoder_layers']} "
          f"layers; load with transformers.T5ForConditionalGeneration.from_pretrained)")
    ids, vectors = embedding_map.load_pooled_embeddings(args.embeddings)
    print(f"embeddings:   {args.embeddings}: {len(ids)} proteins x {vectors.shape[1]} dims, "
          f"finite={bool(np.isfinite(vectors).all())}")
    draw_map(args, ids, vectors, max((r["step"] for r in train + evals), default=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
