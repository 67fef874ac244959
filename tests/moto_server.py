"""A real moto server on 127.0.0.1 over HTTP, for S3 and the Glacier vault calls moto has.

pytest-independent; tests build fixtures on ``running_moto``.  Credentials are
fake and set only in the environment dict the caller passes to boto3/children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

from daemons import free_port, running

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAMOTOTESTKEY00001",
    "AWS_SECRET_ACCESS_KEY": "moto-test-secret-never-logged-0000000000",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoServer:
    port: int
    proc: subprocess.Popen

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget every bucket and vault (moto's own reset route)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")).read()


@contextmanager
def running_moto(log_path=None):
    """moto on a free loopback port; ready when its API answers; stopped with its process group."""
    port = free_port()

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).read()
            return True
        except OSError:
            return False

    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running(argv, what=f"moto server on port {port}", ready=answers, log=log_path,
                 env={**os.environ, **FAKE_CREDENTIALS}) as proc:
        yield MotoServer(port, proc)
