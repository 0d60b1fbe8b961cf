"""Text from a user or a file read as a number: the one place that catches the builtins' ``ValueError``.

``float("x")`` and ``int("x")`` say "not a number" by raising ``ValueError``, the type a bug raises anywhere else
too; a ``try`` around more than the one builtin call would report a bug as bad input. So callers ask
:func:`try_float` / :func:`try_int`, which return None for a value that is not a number, and raise their own
:class:`~ankh_jax.errors.InputError` naming the file, record and field. A damaged JSON file is recognised by
:data:`JSON_ERRORS`, never by ``ValueError``.
"""

from __future__ import annotations

import json

# What json.load / json.loads raise for a file that is not JSON: bad syntax, or bytes that are not UTF-8.
JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)


def try_float(value) -> float | None:
    """``float(value)``, or None when ``value`` is not a number (text that does not parse, None, a list)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def try_int(value) -> int | None:
    """``int(value)``, or None when ``value`` is not an integer (text that does not parse, None, a list)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
