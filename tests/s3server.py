"""A real S3-compatible server for the tests: ``moto`` in server mode (``python -m moto.server``), started on
127.0.0.1 on a free port, with a bucket, and stopped (by its own pid) at the end.

Not a mock of the client: ``pyarrow``'s S3 client (the AWS SDK for C++) talks HTTP to a separate server
process. The tests use credentials of their own, distinctive enough to grep for
(:data:`TEST_ACCESS_KEY`, :data:`TEST_SECRET_KEY`): nothing varmem writes may contain them.

    from tests.s3server import S3Server
    with S3Server() as s3:          # s3.endpoint == "http://127.0.0.1:PORT", s3.env: the variables to set
        s3.uri("data/tiny")         # "s3://varmem-test/data/tiny"

The ``s3`` fixture (tests/episodes/conftest-free: import :func:`s3_fixture` where needed) is one server per
test module, its variables set in ``os.environ`` for the module's tests.

Also :class:`CutProxy`: a TCP relay on 127.0.0.1 to the server that cuts every connection after a number of
bytes from the server, as a server going away mid-transfer does.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

TEST_ACCESS_KEY = "AKIAVARMEMTESTKEY0042"
TEST_SECRET_KEY = "varmem/Test+Secret/DoNotLeak0042xyzXYZ"
BUCKET = "varmem-test"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None


class S3Server:
    """``python -m moto.server`` on 127.0.0.1:PORT with bucket :data:`BUCKET`."""

    def __init__(self, port: int | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The standard variables a client reads: credentials, endpoint, region (no instance metadata lookups)."""
        return {"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, key: str = "") -> str:
        return f"s3://{BUCKET}/{key}".rstrip("/")

    def start(self) -> "S3Server":
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto.server exited with {self.proc.returncode} before answering")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto.server did not answer on {self.endpoint} within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.1)
        self.filesystem().create_dir(BUCKET)
        return self

    def filesystem(self):
        """A pyarrow S3FileSystem of the server (the test's own view, with bucket creation allowed)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, region="us-east-1",
                                 endpoint_override=f"127.0.0.1:{self.port}", scheme="http", allow_bucket_creation=True)

    def objects(self, prefix: str = "") -> dict[str, int]:
        """key → size of every object under ``prefix`` of the bucket."""
        import pyarrow.fs as pafs

        base = f"{BUCKET}/{prefix}".rstrip("/")
        infos = self.filesystem().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {i.path[len(BUCKET) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{BUCKET}/{key}") as f:
            return f.read()

    def write(self, key: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(f"{BUCKET}/{key}") as f:
            f.write(data)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``os.environ`` with ``values`` set, restored afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_fixture(scope: str = "module"):
    """A pytest fixture: one :class:`S3Server` per ``scope``, its variables in ``os.environ`` meanwhile;
    skipped when moto[server] is not installed (``pip install -e .[test]``)."""

    @pytest.fixture(scope=scope)
    def s3(tmp_path_factory):
        if not moto_available():
            pytest.skip("needs moto[server] (pip install -e .[test])")
        from varmem.episodes import storage

        log = tmp_path_factory.mktemp("s3server") / "moto.log"
        with S3Server(log=log) as server, environment(server.env):
            storage._filesystems.clear()  # filesystems of an earlier server's endpoint
            yield server
        storage._filesystems.clear()

    return s3


class CutProxy:
    """A TCP relay 127.0.0.1:PORT → ``target`` that closes each connection once ``cut_after`` bytes of a
    response body larger than ``min_response`` have come back from the server: a server going away
    mid-transfer, as the client sees it. Stops (its threads end) on :meth:`close`."""

    def __init__(self, target_port: int, cut_after: int, min_response: int = 1 << 20):
        self.target_port, self.cut_after, self.min_response = target_port, cut_after, min_response
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target_port))
        client.settimeout(30)
        server.settimeout(30)

        def upstream():
            with contextlib.suppress(OSError):
                while block := client.recv(65536):
                    server.sendall(block)
        threading.Thread(target=upstream, daemon=True).start()
        sent, big = 0, False
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                block = server.recv(65536)
                if not block:
                    break
                if not big and b"Content-Length:" in block[:4096]:
                    head = block[:4096].decode("latin-1", "replace")
                    for line in head.split("\r\n"):
                        if line.lower().startswith("content-length:") and int(line.split(":")[1]) >= self.min_response:
                            big = True
                sent += len(block)
                if big and sent > self.cut_after:
                    self.cuts += 1
                    break
                client.sendall(block)
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)
