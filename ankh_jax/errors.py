"""The one user-error type of ankh_jax.

A command turns :class:`InputError` (a wrong path, file, record, setting, checkpoint, or a directory another run
holds) into one line on stderr and exit status 2 (``ankh_jax.flags``). Every other exception is a bug, in ankh_jax
or in a library under it, and keeps its traceback: a ``ValueError`` raised inside jax, orbax or optax is not the
user's mistake and must not be reported as one.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: reported in one line naming the file, record, field or binding, exit status 2.

    A ``ValueError`` so that library code written against ``ValueError`` keeps working, but the commands catch only
    this type."""
