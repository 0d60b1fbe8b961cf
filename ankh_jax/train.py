"""``python -m ankh_jax.train``: pretrain or continue training an Ankh T5 from gin files (t5x's flags).

    python -m ankh_jax.train --gin_file=configs/pretrain_ankh_base.gin [--gin_file=more.gin ...] \\
      --gin.MODEL_DIR="'runs/ankh_base'" [--gin.NAME=VALUE ...] [--gin_bindings='NAME = VALUE' ...] \\
      [--gin_search_paths=dir1,dir2]

Flags, search paths and errors are :mod:`ankh_jax.flags`'s. The loop is :func:`ankh_jax.training.loop.train`.
Exit status: 0 finished or preempted (a checkpoint was saved), 1 stopped otherwise, 2 bad flags, config, input
or checkpoint (one line, nothing written), 3 a non-finite loss.
"""

from __future__ import annotations

import logging
import sys

from ankh_jax import flags

PROG = "python -m ankh_jax.train"
# Every configurable a pretraining gin file may reference.
GIN_MODULES = ("ankh_jax.model.config", "ankh_jax.io.checkpoints", "ankh_jax.training.optim",
               "ankh_jax.training.partitioning", "ankh_jax.training.run_config", "ankh_jax.training.loop")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = flags.parse(argv, prog=PROG, description=__doc__.split("\n\n")[0])
    if not flags.configure(PROG, args, modules=GIN_MODULES):
        return flags.EXIT_BAD_INPUT

    from ankh_jax.training.loop import NonFiniteLossError, train
    from ankh_jax.training.partitioning import initialize_distributed

    initialize_distributed()
    try:
        result = train()
    except flags.command_errors() as err:
        return flags.report(PROG, err)
    except NonFiniteLossError as err:
        print(f"{PROG}: error: non-finite loss at {flags.one_line(err)}", file=sys.stderr)
        return flags.EXIT_NON_FINITE
    return 0 if result.stopped_by in ("finished", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main())
