"""``ANKH_JAX_HOME``: where ankh_jax keeps what it may rebuild (compiled programs, local copies of remote models,
built sample data). Default ``~/.cache/ankh_jax``."""

from __future__ import annotations

import os


def ankh_jax_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("ANKH_JAX_HOME") or "~/.cache/ankh_jax"))
