"""A preemption notice (SIGTERM: a TPU VM's maintenance event, ``kill``, a scheduler) turned into "save a checkpoint
and stop" at a step boundary that every host agrees on."""

from __future__ import annotations

import signal
import threading

import jax


class PreemptionWatcher:
    """Turns SIGTERM (TPU preemption, ``kill``) into "save a checkpoint and stop" at a step boundary.

    On several hosts jax's preemption sync point makes every host agree on the same step; on one host a signal
    handler sets a flag.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multi_host = jax.process_count() > 1
        if not self._multi_host and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self._flag.set()

    def reached(self, step: int) -> bool:
        if self._multi_host:
            from jax.experimental import multihost_utils
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is not running (e.g. no jax.distributed)
                return False
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
