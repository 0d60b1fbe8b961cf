"""``python -m ankh_jax.export_hf --model=PATH --output=DIR [--encoder_only] [--flax]``: an ankh_jax model as a HF T5.

Writes ``config.json`` (``tie_word_embeddings: false``, so transformers 4 and 5 neither tie nor rescale the head),
``model.safetensors`` (PyTorch layout, float32; sharded above ``--max_shard_size_gb``), ``generation_config.json``,
the tokenizer files (``tokenizer.json`` & co., read by ``transformers.AutoTokenizer``) and a short model card.
The result loads with ``T5ForConditionalGeneration.from_pretrained(DIR)`` (or ``T5EncoderModel`` with
``--encoder_only``). With ``--flax`` the weights are ``flax_model.msgpack`` instead, the parameter tree transformers
4.x's ``FlaxT5ForConditionalGeneration`` / ``FlaxT5EncoderModel`` load (``ankh_jax.io.flax_msgpack``). Never
imports TensorFlow or transformers.

An export replaces an earlier export whole or not at all; anything in DIR that is not an HF export is refused
untouched (:mod:`ankh_jax.io.hf_export`).
"""

from __future__ import annotations

import argparse
import os
import sys

from ankh_jax import flags
from ankh_jax.errors import InputError
from ankh_jax.io.hf_export import check_output, export
from ankh_jax.storage import outputs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ankh_jax.export_hf", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an ankh_jax training directory or a HuggingFace model directory")
    p.add_argument("--output", required=True, help="directory to write the HuggingFace model to")
    p.add_argument("--encoder_only", action="store_true", help="write a T5EncoderModel (no decoder, no lm_head)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an ankh_jax directory (default latest)")
    p.add_argument("--max_shard_size_gb", type=float, default=None,
                   help="split model.safetensors into shards of at most this size (default: one file)")
    p.add_argument("--flax", action="store_true",
                   help="write flax_model.msgpack (transformers 4.x's Flax T5 classes) instead of model.safetensors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ankh_jax.io.loading import load

    try:
        check_output(args.output)  # before the (slow) model load
        # --output may be --model itself: the export is read whole, then swapped in (repairs a re-saved export)
        outputs.check_destinations({"--output": args.output}, directories=("--output",))
        if args.max_shard_size_gb is not None and args.max_shard_size_gb <= 0:
            raise InputError(f"--max_shard_size_gb={args.max_shard_size_gb} must be positive")
        config, params = load(args.model, encoder_only=args.encoder_only, step=args.step)  # plain, unrolled
        max_bytes = None if args.max_shard_size_gb is None else int(args.max_shard_size_gb * 2**30)
        written = export(config, params, args.output, encoder_only=args.encoder_only, source=args.model,
                         max_shard_bytes=max_bytes, flax=args.flax)
    except flags.command_errors() as err:
        return flags.report("export_hf", err)
    print(f"wrote {len(written)} files to {args.output}:")
    for path in written:
        print(f"  {os.path.basename(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
