"""Alertmanager webhook receiver that writes each alert as one line to the journal.

    sevenleague-alert-journal ADDRESS PORT SECRET_FILE

Runs under systemd (sevenleague-alert-journal.service), whose journal takes
the standard output with the syslog identifier sevenleague-alert; the <N>
prefix sets each line's priority: a page is critical, a ticket a warning, a
resolved alert a notice. Read them with `journalctl -t sevenleague-alert`.

Only Alertmanager may post: a POST must carry `Authorization: Bearer <the
secret in SECRET_FILE>` (Alertmanager's http_config.authorization with the
same file as credentials_file), or it gets 401. SECRET_FILE `-` is the standard
input: the unit has systemd open the root-owned file for it (StandardInput=file:),
so the receiver's own user needs no access to it. Each connection has its own
thread and is dropped after TIMEOUT seconds without a request, so an idle or
slow client holds up no one else.

A line: STATUS ALERTNAME {"annotations": ..., "endsAt": ..., "labels": ..., "startsAt": ...}
"""

import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20
# Seconds a connection may wait for its next read or write before it is dropped.
TIMEOUT = 10
PRIORITY = {"page": 2, "ticket": 4}
RESOLVED = 5
OTHER = 6


def lines(payload) -> list[str]:
    """One journal line per alert of an Alertmanager webhook payload (version 4)."""
    out = []
    for alert in payload.get("alerts") or []:
        labels = alert.get("labels") or {}
        status = str(alert.get("status") or payload.get("status") or "firing")
        priority = RESOLVED if status == "resolved" else PRIORITY.get(labels.get("severity"), OTHER)
        detail = {key: alert.get(key) for key in ("labels", "annotations", "startsAt", "endsAt")}
        out.append(
            f"<{priority}>{status.upper()} {labels.get('alertname', '-')} "
            + json.dumps(detail, sort_keys=True, separators=(",", ":"))
        )
    return out


def authorized(header: str | None, secret: bytes) -> bool:
    """Whether an Authorization header carries the bearer secret (compared in constant time)."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), secret)


def read_secret(path: str) -> bytes:
    """The shared secret in `path` (`-`: standard input), without surrounding white space; at least 16 characters."""
    if path == "-":
        secret = sys.stdin.buffer.read().strip()
        sys.stdin.close()
    else:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    if len(secret) < 16:
        raise ValueError(f"{path} holds no secret of at least 16 characters")
    return secret


class Handler(BaseHTTPRequestHandler):
    server_version = "sevenleague-alert-journal"
    # StreamRequestHandler sets it on the connection's socket: an idle client is dropped.
    timeout = TIMEOUT

    def _answer(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(200, "ok") if self.path == "/-/healthy" else self._answer(404, "not found")

    def do_POST(self):
        if not authorized(self.headers.get("Authorization"), self.server.secret):
            # The body stays unread: close rather than read what an unknown client sends.
            self.close_connection = True
            self._answer(401, "unauthorized", {"WWW-Authenticate": "Bearer", "Connection": "close"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._answer(413 if length else 411, "a JSON body of at most 1 MiB", {"Connection": "close"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            found = lines(payload)
        except ValueError as error:
            print(f"<3>refused a webhook body that is not Alertmanager's JSON: {error}", flush=True)
            self._answer(400, "not Alertmanager's webhook JSON")
            return
        for line in found:
            print(line, flush=True)
        self._answer(200, "ok")

    def log_message(self, format, *args):
        # No access log: the alerts are the log.
        pass


class Server(ThreadingHTTPServer):
    """One daemon thread per connection; `secret` is what a POST must present."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], secret: bytes, timeout: float = TIMEOUT):
        handler = type("TimedHandler", (Handler,), {"timeout": timeout})
        super().__init__(address, handler)
        self.secret = secret


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        secret = read_secret(argv[3])
    except (OSError, ValueError) as error:
        print(f"<2>cannot read the webhook secret: {error}", flush=True)
        return 1
    server = Server((argv[1], int(argv[2])), secret)
    print(f"<6>listening on {argv[1]}:{argv[2]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
