"""The journal receiver of Alertmanager (sevenleague_host.alert_journal, the sevenleague-alert-journal command),
run as the unit runs it and spoken to over real sockets: only the holder of the secret may post, and an idle
or slow client holds up no one."""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sevenleague_host import alert_journal

ROOT = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, "-u", "-m", "sevenleague_host.alert_journal"]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(str(ROOT / f) for f in ("collections", "packaging/sevenleague-host")),
}
SECRET = "s3cret-for-the-unit-tests-only"
PAYLOAD = {
    "version": "4",
    "status": "firing",
    "alerts": [{"status": "firing", "labels": {"alertname": "UnitProbe", "severity": "ticket"}, "annotations": {}}],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def receiver(tmp_path):
    """The command on a free loopback port, with its secret file; yields (port, process)."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    proc = subprocess.Popen([*TOOL, "127.0.0.1", str(port), str(secret)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"<6>listening on 127.0.0.1:{port}"
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def post(port: int, body: bytes, headers: dict[str, str], timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json", **headers})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def bearer(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_post_with_the_secret_becomes_a_journal_line(receiver):
    port, proc = receiver
    assert post(port, json.dumps(PAYLOAD).encode(), bearer()) == (200, b"ok\n")
    assert proc.stdout.readline().startswith("<4>FIRING UnitProbe {")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("s3cret-for-the-unit-tests-onlx"),
        bearer(SECRET[:-1]),
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "prefix", "basic", "empty"],
)
def test_a_post_without_the_secret_is_refused_and_writes_nothing(receiver, headers):
    port, proc = receiver
    status, _ = post(port, json.dumps(PAYLOAD).encode(), headers)
    assert status == 401
    # The next line the journal gets is the authorised probe's, not the refused one's.
    probe = {**PAYLOAD, "alerts": [{"labels": {"alertname": "AfterRefusal"}}]}
    assert post(port, json.dumps(probe).encode(), bearer())[0] == 200
    assert proc.stdout.readline().startswith("<6>FIRING AfterRefusal ")


def test_an_idle_connection_does_not_hold_up_a_post(receiver):
    port, proc = receiver
    # Connected, and half a request sent: the single-threaded server waited on it forever.
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    try:
        started = time.monotonic()
        assert post(port, json.dumps(PAYLOAD).encode(), bearer(), timeout=3)[0] == 200
        assert time.monotonic() - started < 3
        assert proc.stdout.readline().startswith("<4>FIRING UnitProbe ")
    finally:
        idle.close()


def test_an_idle_connection_is_dropped_after_the_timeout(tmp_path):
    server = alert_journal.Server(("127.0.0.1", 0), SECRET.encode(), timeout=0.5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        idle = socket.create_connection(server.server_address, timeout=5)
        started = time.monotonic()
        # The server closes the connection: recv sees the end of the stream, well before our own 5 s.
        assert idle.recv(1024) == b""
        assert time.monotonic() - started < 4
        idle.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_refuses_to_start_without_a_usable_secret(tmp_path):
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    for path in (short, tmp_path / "missing"):
        result = subprocess.run(
            [*TOOL, "127.0.0.1", str(free_port()), str(path)], env=ENV, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1 and result.stdout.startswith("<2>cannot read the webhook secret"), result
    usage = subprocess.run([*TOOL, "127.0.0.1", "9097"], env=ENV, capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "SECRET_FILE" in usage.stderr


def test_the_secret_may_come_on_standard_input(tmp_path):
    # As the unit starts it: systemd opens the file (StandardInput=file:), the receiver reads fd 0.
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    port = free_port()
    with secret.open("rb") as stdin:
        proc = subprocess.Popen(
            [*TOOL, "127.0.0.1", str(port), "-"], env=ENV, stdin=stdin, stdout=subprocess.PIPE, text=True
        )
    try:
        assert proc.stdout.readline().strip() == f"<6>listening on 127.0.0.1:{port}"
        assert post(port, json.dumps(PAYLOAD).encode(), bearer())[0] == 200
        assert post(port, json.dumps(PAYLOAD).encode(), bearer("-" * 20))[0] == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_secret_is_compared_whole():
    assert alert_journal.authorized(f"Bearer {SECRET}", SECRET.encode())
    assert alert_journal.authorized(f"bearer  {SECRET} ", SECRET.encode())
    assert not alert_journal.authorized(f"Bearer {SECRET}x", SECRET.encode())
    assert not alert_journal.authorized(None, SECRET.encode())
    assert not alert_journal.authorized(SECRET, SECRET.encode())
