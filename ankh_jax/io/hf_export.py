"""Writing an ankh_jax model as a HuggingFace T5 directory, whole or not at all (``python -m ankh_jax.export_hf``
is the command over this).

An export leaves exactly its own files: it is written into a sibling directory ``.DIR.export-PID`` and swapped in
at the end (one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, two renames elsewhere), so a stale
``model.safetensors`` from an earlier single-file export can never sit beside new shards, and a kill leaves
either the old export or the new one. ``DIR`` must be new, empty, or an earlier HuggingFace model directory
(``config.json``, no ``model_config.json``): anything else is refused untouched.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys

from ankh_jax.data.tokenizer import write_hf_tokenizer
from ankh_jax.io import hf_files, hf_mapping
from ankh_jax.io.loading import EXPORT_MARKER
from ankh_jax.model.config import T5Config
from ankh_jax.storage.atomic import upload, write_marker
from ankh_jax.storage.paths import as_path, check_reachable, display, is_remote

_CARD = """---
library_name: transformers
tags: [protein, ankh, t5, ankh_jax]
---
# {name}

An Ankh-architecture protein language model (T5 {kind}) exported by
ankh_jax (JAX/Flax) from `{source}`.

| | |
|---|---|
| encoder / decoder layers | {enc} / {dec} |
| d_model, d_ff | {d_model}, {d_ff} |
| heads x d_kv | {heads} x {d_kv} |
| parameters | {params:,} |

```python
from transformers import AutoTokenizer, {cls}
tokenizer = AutoTokenizer.from_pretrained("{name}")
model = {cls}.from_pretrained("{name}"){evaluation}
batch = tokenizer(["MKALCLLLLPVLGLLVSS"], padding=True, return_tensors="{tensors}")  # one token per residue + </s>
hidden = model{encoder}(**batch).last_hidden_state
```
Per-residue embeddings: drop the final `</s>` position. Calling the tokenizer works on transformers 4 and 5
(`batch_encode_plus` is gone in 5); lowercase input is upper-cased. Re-saving this directory with transformers 5
writes `tie_word_embeddings: true`, which transformers 4 reads as a tied head: re-export it with ankh_jax.
"""


def check_output(output_dir: str) -> None:
    """Refuses (ValueError) an output that is a file, or a non-empty directory that is not an earlier export."""
    if is_remote(output_dir):
        check_reachable(output_dir, "--output")
    where = as_path(output_dir)
    if not where.exists():
        return
    if not where.is_dir():
        raise ValueError(f"{output_dir}: exists and is not a directory; --output must be a directory")
    entries = {p.name for p in where.iterdir()} - {EXPORT_MARKER}
    if entries and (hf_files.CONFIG_FILE not in entries or "model_config.json" in entries):
        raise ValueError(f"{output_dir}: not empty and not an earlier HuggingFace export (an ankh_jax training "
                         f"directory, or files other than a model's); refusing to replace it: choose a new or empty "
                         f"directory")


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new_dir: str, output_dir: str) -> None:
    """Puts the finished ``new_dir`` at ``output_dir``, replacing (and deleting) an earlier export there."""
    if not os.path.lexists(output_dir):
        os.rename(new_dir, output_dir)
    elif _exchange(new_dir, output_dir):
        shutil.rmtree(new_dir)  # now the old export
    else:
        old = new_dir + ".old"
        os.rename(output_dir, old)
        os.rename(new_dir, output_dir)
        shutil.rmtree(old)


def export(config: T5Config, params, output_dir: str, *, encoder_only: bool = False, source: str = "params",
           max_shard_bytes: int | None = None, flax: bool = False) -> list[str]:
    """Writes an HF model directory (replacing an earlier export there whole); returns the paths written.
    ``flax``: the weights as ``flax_model.msgpack`` (transformers 4.x's Flax T5 classes) instead of safetensors."""
    if flax and max_shard_bytes is not None:
        raise ValueError("a Flax export is one flax_model.msgpack; sharding applies to safetensors only")
    output_dir = display(output_dir)
    check_output(output_dir)
    state = hf_mapping.params_to_hf(params, config, encoder_only=encoder_only)
    if is_remote(output_dir):
        return _export_to_object_storage(config, state, output_dir, encoder_only=encoder_only, source=source,
                                         max_shard_bytes=max_shard_bytes, flax=flax)
    parent, name = os.path.split(output_dir)
    staging = os.path.join(parent, f".{name}.export-{os.getpid()}")
    if os.path.lexists(staging):
        shutil.rmtree(staging)  # left by a killed export of this very process id: ours to remove
    os.makedirs(staging)
    try:
        written = _write_files(config, state, staging, name=name, encoder_only=encoder_only, source=source,
                               max_shard_bytes=max_shard_bytes, flax=flax)
        _swap_in(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [os.path.join(output_dir, os.path.basename(p)) for p in written]


def _export_to_object_storage(config: T5Config, state: dict, output_dir: str, **options) -> list[str]:
    """Object storage has no directory rename: the export is built in a local folder, then committed with a
    marker (``loading.EXPORT_MARKER``): "incomplete" first, every file uploaded, objects of an earlier export that
    this one does not have deleted, "complete" last. A reader refuses the directory in between, so a kill at any
    moment leaves either the earlier export, this one, or a directory that says it is unfinished."""
    import tempfile

    name = output_dir.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="ankh_jax_export_") as staging:
        written = _write_files(config, state, staging, name=name, **options)
        names = sorted(os.path.basename(p) for p in written)
        write_marker(output_dir, EXPORT_MARKER, {"complete": False, "pid": os.getpid()})
        for file in names:
            upload(os.path.join(staging, file), f"{output_dir}/{file}")
    for stale in as_path(output_dir).iterdir():
        if stale.name not in names and stale.name != EXPORT_MARKER:
            stale.unlink()
    write_marker(output_dir, EXPORT_MARKER, {"complete": True, "files": names})
    return [f"{output_dir}/{file}" for file in names]


def _write_files(config: T5Config, state: dict, output_dir: str, *, name: str, encoder_only: bool, source: str,
                 max_shard_bytes: int | None, flax: bool = False) -> list[str]:
    if flax:
        from ankh_jax.io.flax_msgpack import save_flax_weights

        written = save_flax_weights(state, output_dir)
    else:
        written = hf_files.save_hf_weights(state, output_dir, max_shard_bytes=max_shard_bytes)
    config_path = os.path.join(output_dir, hf_files.CONFIG_FILE)
    with open(config_path, "w") as f:
        json.dump(hf_mapping.config_to_hf(config, encoder_only=encoder_only), f, indent=2, sort_keys=True)
    written.append(config_path)
    if not encoder_only:
        gen_path = os.path.join(output_dir, "generation_config.json")
        with open(gen_path, "w") as f:
            json.dump({"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
                       "pad_token_id": config.pad_token_id}, f, indent=2)
        written.append(gen_path)
    written += write_hf_tokenizer(output_dir)
    card_path = os.path.join(output_dir, "README.md")
    with open(card_path, "w") as f:
        f.write(_CARD.format(
            name=name, source=source,
            kind="encoder only" if encoder_only else "encoder-decoder",
            cls=("FlaxT5" if flax else "T5") + ("EncoderModel" if encoder_only else "ForConditionalGeneration"),
            tensors="np" if flax else "pt", evaluation="" if flax else ".eval()",
            encoder="" if encoder_only else (".encode" if flax else ".encoder"),
            enc=config.num_encoder_layers, dec=0 if encoder_only else config.num_decoder_layers,
            d_model=config.d_model, d_ff=config.d_ff, heads=config.num_heads, d_kv=config.d_kv,
            params=int(sum(v.size for v in state.values()))))
    written.append(card_path)
    return written
