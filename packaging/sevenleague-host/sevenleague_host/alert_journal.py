"""Alertmanager webhook receiver that writes each alert as one line to the journal.

    sevenleague-alert-journal ADDRESS PORT

Runs under systemd (sevenleague-alert-journal.service), whose journal takes
the standard output with the syslog identifier sevenleague-alert; the <N>
prefix sets each line's priority: a page is critical, a ticket a warning, a
resolved alert a notice. Read them with `journalctl -t sevenleague-alert`.

A line: STATUS ALERTNAME {"annotations": ..., "endsAt": ..., "labels": ..., "startsAt": ...}
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

MAX_BODY = 1 << 20
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


class Handler(BaseHTTPRequestHandler):
    server_version = "sevenleague-alert-journal"

    def _answer(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(200, "ok") if self.path == "/-/healthy" else self._answer(404, "not found")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._answer(413 if length else 411, "a JSON body of at most 1 MiB")
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


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    server = HTTPServer((argv[1], int(argv[2])), Handler)
    print(f"<6>listening on {argv[1]}:{argv[2]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
