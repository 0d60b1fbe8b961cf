"""``python -m ankh_jax.train``: pretrain or continue training an Ankh T5 from gin files (t5x's flags).

    python -m ankh_jax.train --gin_file=configs/pretrain_ankh_base.gin [--gin_file=more.gin ...] \\
      --gin.MODEL_DIR="'runs/ankh_base'" [--gin.NAME=VALUE ...] [--gin_bindings='NAME = VALUE' ...] \\
      [--gin_search_paths=dir1,dir2] [--preflight]

Flags, search paths and errors are :mod:`ankh_jax.flags`'s. The loop is :func:`ankh_jax.training.loop.train`.
``--preflight`` checks the launch on every host and exits without training
(:mod:`ankh_jax.training.preflight`). Exit status: 0 finished or preempted (a checkpoint was saved) or preflight
passed, 1 stopped otherwise, 2 bad flags, config, input or checkpoint (one line, nothing written), 3 a non-finite
loss.
"""

from __future__ import annotations

import logging
import sys

from ankh_jax import flags

PROG = "python -m ankh_jax.train"
# Every configurable a pretraining gin file may reference.
GIN_MODULES = ("ankh_jax.model.config", "ankh_jax.io.checkpoints", "ankh_jax.training.optim",
               "ankh_jax.training.partitioning", "ankh_jax.training.run_config", "ankh_jax.training.loop")


def _add_arguments(parser) -> None:
    parser.add_argument("--preflight", action="store_true",
                        help="check this launch on every host (same ankh_jax and gin config on all, the step "
                             "compiles, its memory plan, MODEL_DIR writable, data readable), then exit 0 "
                             "without training")


def _model_dir() -> str:
    import copy

    import gin

    return copy.deepcopy(gin.get_bindings("train")["model_dir"])  # deepcopy evaluates the %MODEL_DIR macro


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = flags.parse(argv, prog=PROG, description=__doc__.split("\n\n")[0], add_arguments=_add_arguments)
    if not flags.configure(PROG, args, modules=GIN_MODULES):
        return flags.EXIT_BAD_INPUT

    from ankh_jax.storage.home import enable_compilation_cache
    from ankh_jax.training.loop import NonFiniteLossError, train
    from ankh_jax.training.partitioning import initialize_distributed

    initialize_distributed()
    enable_compilation_cache()  # every command shares $ANKH_JAX_HOME/xla_cache ($ANKH_JAX_COMPILATION_CACHE)
    try:
        if args.preflight:
            from ankh_jax.training.preflight import preflight

            preflight(_model_dir())
            return 0
        result = train()
    except flags.command_errors() as err:
        return flags.report(PROG, err)
    except NonFiniteLossError as err:
        print(f"{PROG}: error: non-finite loss at {flags.one_line(err)}", file=sys.stderr)
        return flags.EXIT_NON_FINITE
    return 0 if result.stopped_by in ("finished", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main())
