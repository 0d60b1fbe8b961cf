"""A 2-D map of protein embeddings coloured by a label, and the nearest-neighbour label agreement.

The agreement is the fraction of labelled proteins whose nearest neighbour by cosine similarity (itself
excluded, among the labelled proteins) carries the same label: near 1 when the embeddings separate the labels,
near the chance level (sum of squared label frequencies) when they carry no signal.

Embeddings come from ``python -m ankh_jax.embed`` HDF5 files (read with ``ankh_jax.io.embeddings_h5.read_embeddings``):
per-residue ``[L, d]`` arrays are mean-pooled, pooled ``[d]`` arrays are used as they are. Labels come from CSV
files with an id column and a label column (``data/pfam_family_*.csv``: ``id``, ``label``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter

import numpy as np

from ankh_jax.plots.common import PlotInputError, note, pyplot, save_figure

METHODS = ("pca", "umap")
MAX_COLOURS = 20  # tab20; rarer labels share one grey OTHER
OTHER = "(other labels)"


@dataclasses.dataclass
class EmbeddingPanel:
    """One map: ``vectors[i]`` is the pooled embedding of ``ids[i]``."""

    title: str
    ids: list[str]
    vectors: np.ndarray   # [N, d]


def load_pooled_embeddings(path: str) -> tuple[list[str], np.ndarray]:
    """``(ids, [N, d] float32)`` from an embeddings HDF5 file; per-residue arrays are mean-pooled."""
    if not os.path.isfile(path):
        raise PlotInputError(f"{path}: no such file")
    from ankh_jax.io.embeddings_h5 import read_embeddings

    try:
        arrays = read_embeddings(path)
    except (OSError, KeyError) as e:
        raise PlotInputError(f"{path}: not an ankh_jax embeddings HDF5 file ({type(e).__name__}: {e})") from None
    if not arrays:
        raise PlotInputError(f"{path}: no embeddings in the file")
    ids, rows, width = [], [], None
    for record_id, a in arrays.items():
        a = np.asarray(a, np.float32)
        if a.ndim == 2:
            a = a.mean(axis=0)
        if a.ndim != 1 or (width is not None and a.shape[0] != width):
            raise PlotInputError(f"{path}: record {record_id!r} has shape {np.shape(arrays[record_id])}; expected "
                                 f"[L, {width or 'd'}] or [{width or 'd'}]")
        width = a.shape[0]
        ids.append(record_id)
        rows.append(a)
    return ids, np.stack(rows)


def read_labels(paths: list[str], *, id_column: str = "id", label_column: str = "label") -> dict[str, str]:
    """``{id: label}`` from one or more CSV files (e.g. the train, valid and test splits of one task)."""
    labels: dict[str, str] = {}
    for path in paths:
        if not os.path.isfile(path):
            raise PlotInputError(f"{path}: no such file")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in (id_column, label_column) if c not in columns]
            if missing:
                raise PlotInputError(f"{path}: no column {missing[0]!r} (columns: {', '.join(columns) or 'none'})")
            for line, row in enumerate(reader, 2):
                record_id, label = row[id_column], row[label_column]
                if record_id in labels and labels[record_id] != label:
                    raise PlotInputError(f"{path}: line {line}: id {record_id!r} has label {label!r} here and "
                                         f"{labels[record_id]!r} before")
                labels[record_id] = label
    return labels


def nearest_neighbour_agreement(vectors: np.ndarray, labels, *, chunk: int = 2048) -> float:
    """Fraction of rows whose most cosine-similar other row has the same label (NaN for fewer than 2 rows)."""
    x = np.asarray(vectors, np.float64)
    labels = np.asarray(labels)
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"{x.shape[0]} vectors for {labels.shape[0]} labels")
    if x.shape[0] < 2:
        return float("nan")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    same = 0
    for start in range(0, x.shape[0], chunk):
        sims = x[start:start + chunk] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not itself
        same += int((labels[np.argmax(sims, axis=1)] == labels[start:start + chunk]).sum())
    return same / x.shape[0]


def chance_agreement(labels) -> float:
    """The agreement expected from embeddings that carry no label signal: sum of squared label frequencies."""
    counts = np.array(list(Counter(labels).values()), np.float64)
    return float(((counts / counts.sum()) ** 2).sum())


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components (numpy SVD of the centred data), signs fixed so the result is
    reproducible: each component's largest loading is positive."""
    x = np.asarray(vectors, np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2]
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    coords = x @ (vt * signs[:, None]).T
    if coords.shape[1] < 2:  # one-dimensional embeddings
        coords = np.concatenate([coords, np.zeros((coords.shape[0], 2 - coords.shape[1]))], axis=1)
    return coords


def project_2d(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    if method == "pca":
        return pca_2d(vectors)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise PlotInputError("--method=umap needs the umap-learn package (pip install umap-learn)") from None
        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(vectors)
    raise PlotInputError(f"method {method!r}; expected one of {METHODS}")


def labelled_subset(panel: EmbeddingPanel, labels: dict[str, str] | None, source: str
                    ) -> tuple[np.ndarray, list[str] | None]:
    """``(vectors, labels)`` of the panel's proteins that have a label (all of them without a labels file);
    one line names what was left out."""
    if labels is None:
        return panel.vectors, None
    keep = [i for i, record_id in enumerate(panel.ids) if record_id in labels]
    if len(keep) < len(panel.ids):
        missing = [panel.ids[i] for i in range(len(panel.ids)) if panel.ids[i] not in labels]
        note(f"{panel.title}: skipped {len(missing)} of {len(panel.ids)} proteins with no label in {source} "
             f"(e.g. {', '.join(missing[:3])})")
    if not keep:
        raise PlotInputError(f"{panel.title}: none of its {len(panel.ids)} ids is in {source}")
    return panel.vectors[keep], [labels[panel.ids[i]] for i in keep]


def draw_embedding_maps(panels: list[EmbeddingPanel], output: str, *, labels: dict[str, str] | None = None,
                        labels_source: str = "the labels file", label_name: str = "label", method: str = "pca"
                        ) -> dict[str, float]:
    """One map per panel, side by side, coloured by label; returns ``{panel title: nearest-neighbour
    agreement}`` (empty without labels). Everything is validated before the PNG is written."""
    prepared = []
    for panel in panels:
        vectors, names = labelled_subset(panel, labels, labels_source)
        prepared.append((panel.title, project_2d(vectors, method), vectors, names))
    agreements = {title: nearest_neighbour_agreement(vectors, names)
                  for title, _, vectors, names in prepared if names is not None}
    colours = _colour_table([n for _, _, _, names in prepared for n in (names or [])])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(prepared), figsize=(6.2 * len(prepared), 5.6), squeeze=False)
    for ax, (title, coords, _, names) in zip(axes[0], prepared, strict=True):
        if names is None:
            ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.7, color="tab:blue", linewidths=0)
        else:
            groups = np.array([n if n in colours else OTHER for n in names])
            for name, colour in [*colours.items(), (OTHER, "lightgrey")]:
                rows = groups == name
                if rows.any():
                    ax.scatter(coords[rows, 0], coords[rows, 1], s=6, alpha=0.7, color=colour, linewidths=0,
                               label=name)
            title = f"{title}\nnearest-neighbour {label_name} agreement {agreements[title]:.3f}"
        ax.set_title(title)
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    if colours:
        handles, names = axes[0, -1].get_legend_handles_labels()
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), title=label_name,
                   markerscale=3, frameon=False)
    if labels is not None:
        chance = chance_agreement([n for _, _, _, names in prepared[:1] for n in names])
        fig.text(0.5, -0.02, f"chance level (no signal): {chance:.3f}", ha="center")
    fig.tight_layout()
    save_figure(fig, output)
    return agreements


def _colour_table(names: list[str]) -> dict[str, object]:
    """The most frequent labels (up to 19 when there are more than 20) -> a tab20 colour."""
    counts = Counter(names)
    ordered = [name for name, _ in counts.most_common()]
    if len(ordered) > MAX_COLOURS:
        ordered = ordered[:MAX_COLOURS - 1]
    cmap = pyplot().get_cmap("tab20" if len(ordered) > 10 else "tab10")
    return {name: cmap(i) for i, name in enumerate(sorted(ordered))}
