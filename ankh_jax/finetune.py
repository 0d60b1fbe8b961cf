"""``python -m ankh_jax.finetune``: train a ConvBERT head on an Ankh encoder for one benchmark task.

    python -m ankh_jax.finetune --gin_file=configs/downstream/ssp3.gin \\
        --gin.MODEL_DIR="'/runs/ssp3'" --gin.ENCODER="'/models/ankh-base'" [--gin.run.mode="'full'"]

Flags, gin search paths and errors are :mod:`ankh_jax.flags`'s (t5x's conventions). Each task's gin file imports
the module under ``ankh_jax.tasks`` that defines it. ``ENCODER`` is an HF or ankh_jax model
directory (for a random tiny one to try things with, ``ankh_jax.testing.write_random_encoder(DIR)`` writes one).

Modes (``run.mode``):
* ``frozen`` (the paper's protocol): per-residue embeddings computed once into ``MODEL_DIR/embeddings.h5`` (reused
  when present), then only the head is trained;
* ``full``: encoder and head trained together; with ``LoraConfig.rank > 0`` the encoder stays frozen and only
  LoRA adapters on ``LoraConfig.targets`` are trained next to the head.
Tasks of kind ``lookup`` train nothing (nearest-neighbour search on mean embeddings), and contact tasks can use
``run.mode='attention'``: logistic regression on the encoder's attention maps.

``MODEL_DIR`` ends with ``run.json`` (the run's identity), ``config.gin``, ``metrics.jsonl``, ``best/`` (orbax
checkpoint of the trained params), ``labels.json`` and ``results.json``; a table of each test set's metric is
printed. Test proteins are evaluated whole (``max_length`` crops training and validation only).

Re-running the same command resumes: after a kill it continues from the last finished epoch (``last_epoch/``,
removed once ``results.json`` is written); after a finished run it prints the results and writes nothing. A run
with another encoder (by weights, not path), task, mode or setting into the same ``MODEL_DIR`` is refused before
anything is written, and so is a second run while the first holds the directory (``.lock``). Bad input (data,
gin, paths) is one line on stderr and exit status 2; a non-finite loss, exit status 3. Validation and test
sequences identical to training ones, and repeated rows, are counted (``results.json`` and ``run.json``, under
``leakage``) with a warning, or refused with ``--gin.run.strict=True``.
"""

from __future__ import annotations

import sys

from ankh_jax import flags

PROG = "python -m ankh_jax.finetune"
GIN_MODULES = ("ankh_jax.downstream.runner",)   # run and its *Config settings


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 done, 2 bad input (one line on stderr, nothing written), 3 a non-finite loss."""
    args = flags.parse(argv, prog=PROG, description=__doc__.split("\n\n")[0])
    if not flags.configure(PROG, args, modules=GIN_MODULES):
        return flags.EXIT_BAD_INPUT
    from ankh_jax.downstream.runner import run
    from ankh_jax.storage.home import enable_compilation_cache

    enable_compilation_cache()  # every command shares $ANKH_JAX_HOME/xla_cache

    try:
        run()
    except flags.command_errors() as err:
        return flags.report(PROG, err)
    except FloatingPointError as err:
        print(f"{PROG}: error: {flags.one_line(err)}", file=sys.stderr)
        return flags.EXIT_NON_FINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
