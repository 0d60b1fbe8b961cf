"""Start N processes of a real entry point as one multi-host JAX job on this machine.

Each process gets its own environment: ``JAX_COORDINATOR_ADDRESS`` (a free local port), ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID`` and ``--xla_force_host_platform_device_count`` fake CPU devices, exactly what a user sets on
plain hosts (README, "Pod slices"); the trainer itself picks gloo for the CPU collectives. Logs go to files so a
killed process still leaves its output behind.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Job:
    procs: list[subprocess.Popen]
    logs: list[str]

    def wait(self, timeout: float) -> list[int]:
        """Exit codes (negative: killed by that signal); kills everything left after ``timeout`` seconds."""
        deadline = time.time() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.time(), 0.1)))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"job still running after {timeout:.0f}s:\n{self.tail()}") from None
        return codes

    def kill(self, sig: int = signal.SIGKILL, which: Sequence[int] | None = None) -> None:
        for i, p in enumerate(self.procs):
            if (which is None or i in which) and p.poll() is None:
                p.send_signal(sig)

    def log(self, i: int) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- process {i} ---\n{self.log(i)[-chars:]}" for i in range(len(self.procs)))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not predicate():
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")
            if all(p.poll() is not None for p in self.procs):
                raise AssertionError(f"the job ended before {what}:\n{self.tail()}")
            time.sleep(0.1)


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (tests/conftest.py's compile settings) with ``devices`` fake CPU devices."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).split()
    return " ".join([f"--xla_force_host_platform_device_count={devices}", *flags])


def host_dirs(log_dir: str, i: int) -> dict[str, str]:
    """Process ``i``'s own working directory, HOME, TMPDIR and data directory (``private_dirs``)."""
    base = os.path.join(os.path.abspath(log_dir), f"host_{i}")
    return {name: os.path.join(base, name) for name in ("cwd", "home", "tmp", "data")}


def start(args: Sequence[str], *, num_processes: int, devices_per_process: int, log_dir: str,
          env: dict | None = None, private_dirs: bool = False) -> Job:
    """``python <args...>`` (e.g. ``["-m", "ankh_jax.train", ...]``) on ``num_processes`` processes forming one
    JAX job. With ``private_dirs`` the processes share no directory, as the hosts of a Cloud TPU slice do not:
    each runs in its own working directory with its own HOME, TMPDIR and data directory (:func:`host_dirs`),
    so whatever they share must go through object storage."""
    port = free_port()
    os.makedirs(log_dir, exist_ok=True)
    procs, logs = [], []
    for i in range(num_processes):
        penv = dict(os.environ, **(env or {}))
        penv.update({
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": xla_flags(devices_per_process),
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(i),
            "PYTHONPATH": REPO + os.pathsep + penv.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        })
        cwd = REPO
        if private_dirs:
            own = host_dirs(log_dir, i)
            for folder in own.values():
                os.makedirs(folder, exist_ok=True)
            penv.update(HOME=own["home"], TMPDIR=own["tmp"], ANKH_JAX_DATA_DIR=own["data"])
            cwd = own["cwd"]
        log_path = os.path.join(log_dir, f"process_{i}.log")
        with open(log_path, "w") as log:
            procs.append(subprocess.Popen([sys.executable, *args], cwd=cwd, env=penv,
                                          stdout=log, stderr=subprocess.STDOUT))
        logs.append(log_path)
    return Job(procs, logs)
