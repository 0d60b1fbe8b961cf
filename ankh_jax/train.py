"""``python -m ankh_jax.train``: gin flags -> :func:`ankh_jax.trainer.train`.

Flags follow t5x's conventions::

    python -m ankh_jax.train \\
      --gin_file=configs/pretrain_ankh_base.gin [--gin_file=more.gin ...] \\
      --gin.MODEL_DIR="'gs://bucket/ankh_base'" [--gin.NAME=VALUE ...] [--gin_bindings='NAME = VALUE' ...] \\
      [--gin_search_paths=dir1,dir2]

``--gin_file`` may be given several times (later files override earlier ones) and is looked up relative to the
search paths (default: the current directory and the checkout root, so ``configs/...`` works from anywhere).
``--gin.NAME=VALUE`` is the binding ``NAME = VALUE`` (strings need inner quotes). Every file and binding is parsed
and checked before anything runs: a misspelled name is an error naming it, and nothing is written.
"""

from __future__ import annotations

import logging
import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USAGE = """usage: python -m ankh_jax.train --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...]
                              [--gin_bindings=BINDING ...] [--gin_search_paths=DIR[,DIR...]]"""


class UsageError(ValueError):
    pass


def parse_flags(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(gin files, bindings, search paths) from t5x-style flags."""
    files, bindings, paths = [], [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise UsageError(USAGE)
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}\n{USAGE}")
        name, eq, value = arg[2:].partition("=")
        if not eq:  # "--flag value" form
            if i + 1 >= len(argv):
                raise UsageError(f"flag --{name} needs a value\n{USAGE}")
            i += 1
            value = argv[i]
        if name == "gin_file":
            files.append(value)
        elif name == "gin_bindings":
            bindings.append(value)
        elif name == "gin_search_paths":
            paths.extend(p for p in value.split(",") if p)
        elif name.startswith("gin."):
            bindings.append(f"{name[4:]} = {value}")
        else:
            raise UsageError(f"unknown flag --{name}\n{USAGE}")
        i += 1
    if not files:
        raise UsageError(f"at least one --gin_file is required\n{USAGE}")
    return files, bindings, paths


def parse_gin(files: list[str], bindings: list[str], search_paths: list[str]) -> None:
    """Parses and finalises the gin config; raises ValueError naming the bad file or binding."""
    import gin

    # Registers every configurable the config files may reference.
    import ankh_jax.checkpoints
    import ankh_jax.model.config
    import ankh_jax.optim
    import ankh_jax.partitioning
    import ankh_jax.trainer  # noqa: F401

    gin.clear_config()  # a fresh config per call (tests call main() repeatedly in one process)
    for path in [os.getcwd(), CHECKOUT] + search_paths:
        gin.add_config_file_search_path(path)
    for f in files:
        if not any(os.path.isfile(os.path.join(p, f)) for p in ["", os.getcwd(), CHECKOUT] + search_paths):
            raise ValueError(f"gin file {f!r} not found (searched the current directory, {CHECKOUT} and "
                             f"{search_paths or 'no --gin_search_paths'})")
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    check_macros_are_used(bindings)
    gin.finalize()


def _macro_references(value, found: set) -> set:
    from gin import config as gin_config

    if isinstance(value, gin_config.ConfigurableReference):
        if value.config_key[1] == "gin.macro":
            found.add(value.config_key[0])
    elif isinstance(value, dict):
        for v in value.values():
            _macro_references(v, found)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _macro_references(v, found)
    return found


def check_macros_are_used(bindings: list[str]) -> None:
    """A macro set on the command line that no binding reads (``--gin.TRAIN_STEP=5`` for ``TRAIN_STEPS``) would be
    silently ignored: raise ValueError naming it. (Misspelled parameters are already errors in gin itself.)"""
    from gin import config as gin_config

    referenced: set = set()
    for (_, selector), params in list(gin_config._CONFIG.items()):  # gin keeps bindings here; no public walker
        _macro_references(params, referenced)
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if name and "." not in name and "/" not in name and name not in referenced:
            import difflib

            macros = sorted(scope for scope, selector in gin_config._CONFIG
                            if selector == "gin.macro" and scope != name and scope in referenced)
            close = difflib.get_close_matches(name, macros, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (macros read here: {', '.join(macros)})"
            raise ValueError(f"binding '{binding.strip()}': no configuration reads the macro {name}{hint}")


def _without_gin_context(err: BaseException) -> str:
    """The message alone: gin appends "In call to configurable 'train' (...)" on a line of its own."""
    return str(err).split("\n  In call to configurable")[0].strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        files, bindings, paths = parse_flags(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        parse_gin(files, bindings, paths)
    except Exception as err:  # noqa: BLE001 - gin raises ValueError/KeyError/... with the offending name in the message
        print(f"error: invalid gin configuration: {type(err).__name__}: {err}", file=sys.stderr)
        return 2

    from ankh_jax.checkpoints import CheckpointError
    from ankh_jax.dir_lock import DirectoryInUseError
    from ankh_jax.partitioning import initialize_distributed
    from ankh_jax.trainer import InputError, NonFiniteLossError, RunConfigError, train

    initialize_distributed()
    try:
        result = train()
    except (InputError, RunConfigError, CheckpointError, DirectoryInUseError) as err:
        print(f"error: {_without_gin_context(err)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: non-finite loss at {_without_gin_context(err)}", file=sys.stderr)
        return 3
    return 0 if result.stopped_by in ("finished", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main())
