"""The OpenBao client over a unix listener, the way the openbao role reads the seal status, initialises
and unseals a server whose API port is closed; and what a client sees at a closed port."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from openbao_dev import BAO, STARTUP_SECONDS

from ansible_collections.sevenleague.platform.plugins.module_utils.openbao import REFUSED_HINT, OpenBao, OpenBaoError


@pytest.fixture(scope="module")
def sealed_server(tmp_path_factory):
    """A real, uninitialised OpenBao (in-memory storage) listening on a unix socket only."""
    tmp = tmp_path_factory.mktemp("openbao-unix")
    path = tmp / "api.sock"
    config = tmp / "server.hcl"
    config.write_text(
        f'storage "inmem" {{}}\ndisable_mlock = true\nlistener "unix" {{\n  address = "{path}"\n  tls_disable = true\n}}\n'
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8"}
    with open(tmp / "bao.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BAO), "server", f"-config={config}"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while not path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"OpenBao did not listen on {path}: {(tmp / 'bao.log').read_text()[-2000:]}")
                time.sleep(0.05)
            yield f"unix://{path}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_initialise_and_unseal_through_the_unix_listener(sealed_server):
    api = OpenBao(sealed_server)
    assert api.request("GET", "sys/seal-status", what="reading the seal status")["initialized"] is False
    keys = api.write("sys/init", {"secret_shares": 3, "secret_threshold": 2})["keys_base64"]
    assert api.write("sys/unseal", {"key": keys[0]})["progress"] == 1
    assert api.write("sys/unseal", {"key": keys[1]})["sealed"] is False
    # The same listener answers with OpenBao's own refusals, like the TCP one.
    with pytest.raises(OpenBaoError, match=r"refused reading sys/mounts \(403\)"):
        api.request("GET", "sys/mounts", what="reading sys/mounts")


def test_a_missing_socket_says_so(tmp_path):
    with pytest.raises(OpenBaoError, match="No such file or directory") as error:
        OpenBao(f"unix://{tmp_path}/none.sock").request("GET", "sys/seal-status", what="reading")
    assert error.value.retry


def test_a_refused_api_port_says_openbao_may_be_sealed():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Bound, not listening: the kernel refuses the connection, as the sealed server's gate does.
        with pytest.raises(OpenBaoError) as error:
            OpenBao(f"https://127.0.0.1:{port}", timeout=3).request("GET", "sys/health", what="reading the health")
    assert "Connection refused" in str(error.value) and REFUSED_HINT in str(error.value)
