"""``python -m ankh_jax.plot``: pictures of a training run or of embeddings (PNG, no display needed).

    python -m ankh_jax.plot MODEL_DIR [--output=PNG]
        training curves from MODEL_DIR/metrics.jsonl -> MODEL_DIR/plots/training.png (a running run too)
    python -m ankh_jax.plot --embeddings=OUT.h5 [--labels=A.csv[,B.csv...]] [--label_column=label]
        [--id_column=id] [--method=pca|umap] [--output=PNG]
        a 2-D map of the (mean-pooled) embeddings coloured by the label column -> OUT.map.png, and the
        nearest-neighbour label agreement (how often a protein's cosine nearest neighbour has its label)

Lines that are skipped (a partial last metrics line, ids without a label, a run without eval rows) are named on
stderr; a missing or unreadable input stops with one line and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from ankh_jax.plots.common import PlotInputError

EXIT_BAD_INPUT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ankh_jax.plot", description=__doc__.split("\n\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", help="a pretraining run directory (with metrics.jsonl)")
    p.add_argument("--embeddings", help="an HDF5 file written by python -m ankh_jax.embed")
    p.add_argument("--labels", default="", help="CSV file(s), comma-separated, with an id and a label column")
    p.add_argument("--label_column", default="label")
    p.add_argument("--id_column", default="id")
    p.add_argument("--method", default="pca", choices=("pca", "umap"), help="2-D projection (umap: umap-learn)")
    p.add_argument("--output", help="the PNG to write (default: see above)")
    args = p.parse_args(argv)
    if (args.model_dir is None) == (args.embeddings is None):
        p.error("give either MODEL_DIR or --embeddings=FILE")
    if args.labels and args.model_dir is not None:
        p.error("--labels goes with --embeddings")
    return args


def embedding_map_path(embeddings: str) -> str:
    stem, _ = os.path.splitext(embeddings)
    return stem + ".map.png"


def plot_embeddings(args: argparse.Namespace) -> str:
    from ankh_jax.plots import embedding_map

    label_files = [p for p in args.labels.split(",") if p]
    labels = (embedding_map.read_labels(label_files, id_column=args.id_column, label_column=args.label_column)
              if label_files else None)
    ids, vectors = embedding_map.load_pooled_embeddings(args.embeddings)
    output = args.output or embedding_map_path(args.embeddings)
    panel = embedding_map.EmbeddingPanel(os.path.basename(args.embeddings), ids, vectors)
    agreements = embedding_map.draw_embedding_maps(
        [panel], output, labels=labels, labels_source=",".join(label_files), label_name=args.label_column,
        method=args.method)
    for title, value in agreements.items():
        print(f"{title}: nearest-neighbour {args.label_column} agreement {value:.4f}")
    return output


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.embeddings is not None:
            output = plot_embeddings(args)
        else:
            from ankh_jax.plots.training import plot_training

            output = plot_training(args.model_dir, args.output)
    except PlotInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as e:
        print(f"error: {e} (pip install 'ankh-jax[viz]')", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
