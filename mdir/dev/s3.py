"""A local S3-compatible server (moto) on 127.0.0.1 for tests and the demo.

The server is moto's public ``ThreadedMotoServer``, run in a small process of its own
(``python -m mdir.dev.s3 --port P``) so that the demo's server outlives the command that
started it and is stopped, like every local service, by its process group. The test keys
live in a 0600 credentials file: only its path is in the environment (and may travel to Ray
workers), never the key values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from mdir.dev.procs import ServiceError, free_port, http_status, spawn, wait_until
from mdir.dev.service import Service

#: The keys moto accepts (any do); written to the credentials file, never to the env.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server(Service):
    """A moto S3 server on 127.0.0.1 (``endpoint`` = ``http://127.0.0.1:<port>``)."""

    port: int = 0
    credentials_file: str = ""
    kind: str = "s3"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point boto3 / s3fs / pyarrow at this server (key values stay in
        the credentials file; `mdir.runtime.forward_env` forwards only its path)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_SHARED_CREDENTIALS_FILE": self.credentials_file,
            "AWS_DEFAULT_REGION": TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        }

    @property
    def url(self) -> str:
        return self.endpoint

    def healthy(self) -> bool:
        return http_status(f"{self.endpoint}/moto-api/") == 200

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (idempotent) and return ``s3://name``."""
        c = self.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=name)
        return f"s3://{name}"


def write_credentials_file(path: Path) -> Path:
    """An AWS shared-credentials file (mode 0600) with the local server's test keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "[default]\n"
            f"aws_access_key_id = {TEST_CREDENTIALS['AWS_ACCESS_KEY_ID']}\n"
            f"aws_secret_access_key = {TEST_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n"
        )
    return path


def start_s3(state_dir: str | Path, port: int | None = None, timeout: float = 60.0) -> S3Server:
    """Start (or reuse) a moto S3 server; state in ``<state_dir>/s3.json``, log ``s3.log``."""
    state_dir = Path(state_dir).absolute()
    state_file = state_dir / "s3.json"
    srv = S3Server.reuse(state_file)
    if srv is not None:
        return srv
    port = port or free_port()
    log = state_dir / "s3.log"
    creds = write_credentials_file(state_dir / "aws_credentials")
    cmd = [sys.executable, "-m", "mdir.dev.s3", "--port", str(port)]
    proc = spawn(cmd, log, os.environ)
    srv = S3Server(
        state_file=str(state_file),
        pids=[proc.pid],
        pgid=proc.pid,
        log=str(log),
        port=port,
        credentials_file=str(creds),
    )
    srv.save()
    try:
        wait_until(srv.healthy, timeout, "moto S3 server", log, proc)
    except ServiceError:
        srv.stop()
        raise
    return srv


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run moto's ``ThreadedMotoServer`` on ``host:port`` until SIGTERM / SIGINT."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    print(f"moto S3 server on http://{host}:{port}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m mdir.dev.s3",
        description="A moto S3 server on 127.0.0.1 (local tests and the demo); stops on SIGTERM.",
    )
    ap.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    serve(ap.parse_args(argv).port)


if __name__ == "__main__":
    main()
