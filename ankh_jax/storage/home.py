"""``ANKH_JAX_HOME``: the one folder ankh_jax keeps its own things in (default ``~/.cache/ankh_jax``), and jax's
persistent compilation cache under it, shared by every command.

What lives there: ``ankh-base/`` and ``ankh-large/`` (the released models, ``ankh_jax.api``), ``tfds/`` (the sample
dataset built for an installed ankh_jax), ``xla_cache/`` (compiled XLA programs: a second run of any command with
the same shapes loads its programs instead of compiling them).
"""

from __future__ import annotations

import os

HOME_ENV = "ANKH_JAX_HOME"
CACHE_ENV = "ANKH_JAX_COMPILATION_CACHE"  # a folder for the compilation cache, or '' to turn it off


def ankh_jax_home() -> str:
    """``$ANKH_JAX_HOME``, else ``~/.cache/ankh_jax``."""
    return os.environ.get(HOME_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ankh_jax")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Points jax's persistent compilation cache at ``directory`` and returns it (None: off).

    ``directory`` None: ``$ANKH_JAX_COMPILATION_CACHE`` if set, else ``ankh_jax_home()/xla_cache``; the empty
    string turns the cache off. Every command calls this once, before its first compile. jax keys each entry by
    the program, its shapes and shardings, the jax/XLA version and the devices, so a changed program is compiled
    again, never mixed up; several processes (the hosts of a pod, sharing the folder) may use it at once.
    """
    if directory is None:
        directory = os.environ.get(CACHE_ENV, os.path.join(ankh_jax_home(), "xla_cache"))
    if not directory:
        return None
    import jax  # only when a command turns the cache on: nothing else in ankh_jax.storage needs jax

    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
