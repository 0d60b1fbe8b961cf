"""Rebuilds ``ankh_jax/assets/ankh_vocab.model``, the SentencePiece model behind Ankh's seqio vocabulary.

The model is a pure function of the vocabulary in ``ankh_jax/data/tokenizer.py``, so rebuilding it gives the same bytes
(``--check`` verifies the shipped file instead of writing it).
"""

import argparse
import sys

from ankh_jax.data import tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output", default=tokenizer.VOCAB_MODEL_PATH)
    p.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = p.parse_args(argv)
    data = tokenizer.build_sentencepiece_model()
    if args.check:
        with open(args.output, "rb") as f:
            same = f.read() == data
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from the vocabulary in tokenizer.py'}")
        return 0 if same else 1
    with open(args.output, "wb") as f:
        f.write(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
