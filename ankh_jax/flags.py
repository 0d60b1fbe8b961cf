"""The one command-line convention of every gin-configured command (``train``, ``finetune``, ``plan_memory``).

Flags follow t5x::

    --gin_file=FILE            repeatable; later files override earlier ones
    --gin.NAME=VALUE           the binding ``NAME = VALUE`` (strings need inner quotes: --gin.MODEL_DIR="'runs/x'")
    --gin_bindings='NAME = V'  repeatable, the same as --gin.NAME=V
    --gin_search_paths=A,B     more folders to look up gin files and their ``include`` lines in

A gin file is looked up in the current directory, then in ``--gin_search_paths``, then in the configs shipped with
ankh_jax (:func:`configs_dir`), so ``--gin_file=pretrain_tiny_cpu.gin`` works from any directory and
``--gin_file=configs/pretrain_tiny_cpu.gin`` from a checkout. Every file and binding is parsed and checked before
anything runs: a misspelled configurable, parameter or macro, or a missing file, is one line naming it, exit
status 2, and nothing written (:func:`command_errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from importlib import resources

from ankh_jax.errors import InputError, InputNotFoundError

EXIT_BAD_INPUT = 2      # a usage, configuration or input error: one line on stderr, nothing written
EXIT_NON_FINITE = 3     # training hit a NaN/inf loss


def configs_dir() -> str:
    """The gin files installed with ankh_jax (``ankh_jax.configs``: the checkout's top-level ``configs/``, mapped
    into the package by pyproject.toml): models/, runs/, downstream/ and the ready pretraining files."""
    return str(resources.files("ankh_jax.configs"))


def search_paths(extra: Iterable[str] = ()) -> list[str]:
    """Where gin files and their includes are looked up, in order."""
    return [os.getcwd(), *[p for p in extra if p], configs_dir()]


class GinArgs(argparse.Namespace):
    gin_file: list[str]
    gin_bindings: list[str]
    gin_search_paths: list[str]


def parse(argv: list[str] | None, *, prog: str, description: str = "",
          add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> GinArgs:
    """t5x-style gin flags plus the command's own (``add_arguments``). A usage error exits 2 via argparse."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a binding 'NAME = VALUE' (repeatable)")
    parser.add_argument("--gin_search_paths", default="", help="comma-separated folders for gin files and includes")
    if add_arguments is not None:
        add_arguments(parser)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv, namespace=GinArgs())
    bindings = list(args.gin_bindings)
    for item in rest:
        name, sep, value = item[len("--gin."):].partition("=") if item.startswith("--gin.") else ("", "", "")
        if not name or not sep:
            parser.error(f"unrecognised argument {item!r} (gin bindings are --gin.NAME=VALUE)")
        bindings.append(f"{name} = {value}")
    if not args.gin_file:
        parser.error("at least one --gin_file is required")
    args.gin_bindings = bindings
    args.gin_search_paths = [p for p in args.gin_search_paths.split(",") if p]
    return args


def find_gin_file(name: str, paths: list[str]) -> str:
    for folder in ["", *paths]:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise InputNotFoundError(f"gin file {name!r} not found (searched {', '.join(paths)})")


def parse_gin(files: list[str], bindings: list[str], extra_search_paths: Iterable[str] = (), *,
              modules: Iterable[str] = ()) -> None:
    """Imports ``modules`` (their configurables), then parses, checks and finalises the config.

    Raises FileNotFoundError or gin's ValueError/KeyError/... naming the bad file or binding."""
    import gin

    import_configurables(modules)
    paths = search_paths(extra_search_paths)
    resolved = [find_gin_file(f, paths) for f in files]
    for path in paths:
        gin.add_config_file_search_path(path)
    with _quiet_gin_search():
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
    check_macros_are_used(bindings)
    gin.finalize()


def import_configurables(modules: Iterable[str]) -> None:
    """Imports ``modules``, registering their configurables in a fresh, unlocked gin config: an earlier command in
    this process (tests call several main()s) finalised and locked the last one."""
    import importlib

    import gin

    gin.clear_config()
    for module in modules:
        importlib.import_module(module)


@contextlib.contextmanager
def _quiet_gin_search():
    """gin logs an ERROR for every search path an ``include`` is not under before it finds the file."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("Path not found")

    drop = Drop()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


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
            macros = sorted(scope for scope, selector in gin_config._CONFIG
                            if selector == "gin.macro" and scope != name and scope in referenced)
            close = difflib.get_close_matches(name, macros, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (macros read here: {', '.join(macros)})"
            raise InputError(f"binding '{binding.strip()}': no configuration reads the macro {name}{hint}")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without gin's "In call to configurable" notes."""
    lines = [line.strip() for line in str(err).splitlines()
             if line.strip() and not line.strip().startswith("In call to configurable")]
    return " ".join(lines) or type(err).__name__


def configure(prog: str, args: GinArgs, *, modules: Iterable[str] = ()) -> bool:
    """:func:`parse_gin` for a command: False (after one line on stderr) when the configuration is invalid. The
    command's modules are imported first, outside that report: an error while importing them is a bug, and keeps
    its traceback."""
    import_configurables(modules)
    try:
        parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    except SyntaxError as err:
        print(f"{prog}: error: invalid gin configuration: {gin_syntax_error(err)}", file=sys.stderr)
        return False
    except Exception as err:  # noqa: BLE001 - gin raises ValueError/KeyError/... naming the binding
        print(f"{prog}: error: invalid gin configuration: {type(err).__name__}: {one_line(err)}", file=sys.stderr)
        return False
    return True


def gin_syntax_error(err: SyntaxError) -> str:
    """gin's SyntaxError in one line naming the binding (or file and line); an unquoted string value gets the
    quoting it needs (``--gin.MODEL_DIR=/tmp/x`` -> ``--gin.MODEL_DIR="'/tmp/x'"``)."""
    text = (err.text or "").strip()
    reason = (err.msg or "").splitlines()[0].strip() if err.msg else "cannot parse"
    if err.filename:
        return f"{err.filename}: line {err.lineno}: {text!r}: {reason}"
    name, _, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if value and value[0] not in "'\"[({@%-.0123456789" and value not in ("True", "False", "None"):
        return (f"binding '{text}': {value!r} is not a gin value; a string needs inner quotes: "
                f"--gin.{name}=\"'{value}'\"")
    return f"binding '{text}': gin cannot parse the value {value!r} ({reason})"


def command_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as bad input (one line, exit 2) rather than a traceback: :class:`InputError` (a wrong
    path, file, record, setting or checkpoint, a directory another run holds). Anything else, a plain ``ValueError``
    from jax, orbax or optax included, is a bug and keeps its traceback (exit 1)."""
    return (InputError,)


def report(prog: str, err: BaseException) -> int:
    """One line on stderr for a bad input; the exit status to return."""
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return EXIT_BAD_INPUT
