"""A RELP sender over mutual TLS with a host's certificate, as any host (or whoever holds its key) can
run one; the tests copy it to a host and run it there.

    python3 relp_send.py ADDRESS PORT SERVER_NAME PKI_DIR TAG COUNT [STARTED_FILE]

Sends COUNT lines `n=<i> xxx...` (frames of about FRAME bytes) under the program name TAG to the RELP
listener at ADDRESS:PORT, whose certificate must name SERVER_NAME, presenting PKI_DIR's fullchain.pem and
key.pem. It sends WINDOW frames at a time, the next batch once the listener acknowledged them all, so it
goes as fast as the listener (or the network) takes them. Prints one JSON line: lines, bytes (the RELP
frames sent) and seconds (from the first frame to the last acknowledgement). Creates STARTED_FILE, if
given, once the first batch is acknowledged."""

import json
import re
import socket
import ssl
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

FRAME = 256
WINDOW = 128
HEADER = re.compile(rb"(\d+) (\w+) (\d+)[ \n]")


class Session:
    def __init__(self, address, port, server_name, pki):
        context = ssl.create_default_context(cafile=f"{pki}/ca.pem")
        context.load_cert_chain(f"{pki}/fullchain.pem", f"{pki}/key.pem")
        raw = socket.create_connection((address, port), timeout=120)
        self.sock = context.wrap_socket(raw, server_hostname=server_name)
        self.buffer = b""
        self.txnr = 0

    def frame(self, command, data=b""):
        self.txnr += 1
        if data:
            return b"%d %s %d %s\n" % (self.txnr, command, len(data), data)
        return b"%d %s 0\n" % (self.txnr, command)

    def response(self):
        """The next frame the listener sends: (command, data)."""
        while True:
            match = HEADER.match(self.buffer)
            if match:
                length = int(match.group(3))
                end = match.end() + length if length else match.end()
                if len(self.buffer) >= end + (1 if length else 0):
                    data = self.buffer[match.end() : end]
                    self.buffer = self.buffer[end + (1 if length else 0) :]
                    return match.group(2), data
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the listener closed the session")
            self.buffer += chunk

    def exchange(self, frames):
        self.sock.sendall(b"".join(frames))
        for _ in frames:
            command, data = self.response()
            if command != b"rsp" or not data.startswith(b"200"):
                raise SystemExit(f"refused: {command!r} {data!r}")


def main(address, port, server_name, pki, tag, count, started=None):
    session = Session(address, int(port), server_name, pki)
    session.exchange([session.frame(b"open", b"relp_version=0\nrelp_software=sevenleague-test\ncommands=syslog")])
    host = socket.gethostname()
    sent = 0
    begin = time.monotonic()
    for first in range(0, int(count), WINDOW):
        frames = []
        for n in range(first, min(first + WINDOW, int(count))):
            stamp = datetime.now(UTC).isoformat(timespec="microseconds")
            message = f"<13>1 {stamp} {host} {tag} - - - n={n} ".encode()
            frames.append(session.frame(b"syslog", message + b"x" * max(0, FRAME - 20 - len(message))))
        session.exchange(frames)
        sent += sum(len(f) for f in frames)
        if started and first == 0:
            Path(started).touch()
    seconds = time.monotonic() - begin
    # librelp answers a close with an empty rsp, then a serverclose.
    session.sock.sendall(session.frame(b"close"))
    session.response()
    print(json.dumps({"lines": int(count), "bytes": sent, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
