"""Server machinery shared by the sample apps: config, JSON logs, metrics,
health, graceful shutdown and systemd readiness.

Standard library only (Debian 12's python3). This is not an installable
package: the packaging step ships this file next to each app's script, and
Python puts the script's directory on sys.path, so `import svc` works there.
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Query = dict[str, list[str]]
Route = Callable[[Query], tuple[int, dict[str, Any]]]
# A config check: a predicate on the (already type-checked) value and the
# message to show when it fails.
Check = tuple[Callable[[Any], bool], str]

COMMON_DEFAULTS: dict[str, Any] = {
    "listen_address": "127.0.0.1",
    "fault_healthz": False,
    "drain_seconds": 5.0,
}

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BUILTIN_PATHS = ("/healthz", "/version", "/metrics")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A request that takes longer than this to send or read is dropped, so an idle
# or slow client cannot hold a thread, nor hold up shutdown, forever.
CLIENT_TIMEOUT_SECONDS = 30


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


COMMON_CHECKS: dict[str, Check] = {
    "listen_address": (_is_ip, "must be an IP address"),
    "port": (lambda v: 1 <= v <= 65535, "must be between 1 and 65535"),
    "drain_seconds": (lambda v: math.isfinite(v) and v >= 0, "must be a number >= 0"),
}


class ConfigError(Exception):
    """A config file the app cannot run with; the message names the key."""


# ---------------------------------------------------------------- logging

_log_lock = threading.Lock()


def log(level: str, msg: str, **fields: Any) -> None:
    """Write one JSON object per line to stdout, for journald."""
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = json.dumps({"ts": ts, "level": level, "msg": msg, **fields}, default=str)
    # Handler threads log concurrently; whole lines must not interleave. Flush
    # at once: stdout is block-buffered when it is a pipe or journald's socket.
    with _log_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- config

# What json.load can return, named as in JSON.
_JSON_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _type_ok(value: Any, default: Any) -> bool:
    # bool is a subclass of int in Python but not in JSON: `"port": true` is wrong.
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def load_config(path: str | None, defaults: dict[str, Any], checks: dict[str, Check]) -> dict[str, Any]:
    """Defaults overlaid with the JSON object in `path`; raises ConfigError
    naming the offending key."""
    config = dict(defaults)
    if path is None:
        return config
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"config {path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: must be a JSON object, got {_JSON_TYPE_NAMES[type(data)]}")
    for key, value in data.items():
        if key not in defaults:
            raise ConfigError(f"config {path}: unknown key '{key}' (known keys: {', '.join(sorted(defaults))})")
        if not _type_ok(value, defaults[key]):
            raise ConfigError(
                f"config {path}: key '{key}' must be {_JSON_TYPE_NAMES[type(defaults[key])]}, "
                f"got {_JSON_TYPE_NAMES[type(value)]}"
            )
        config[key] = float(value) if isinstance(defaults[key], float) else value
    for key, (ok, message) in checks.items():
        if not ok(config[key]):
            raise ConfigError(f"config {path}: key '{key}' {message}, got {config[key]!r}")
    return config


# ---------------------------------------------------------------- metrics


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))  # per bucket, not cumulative
    total: float = 0.0
    count: int = 0


class Metrics:
    """Request counter and latency histogram, rendered in the Prometheus text
    format 0.0.4. Label values are only status codes, known routes and the
    version constant, so they never need escaping."""

    def __init__(self, version: str) -> None:
        self._version = version
        self._lock = threading.Lock()
        self._requests: dict[tuple[int, str], int] = {}
        self._durations: dict[str, _Histogram] = {}

    def observe(self, code: int, path: str, seconds: float) -> None:
        with self._lock:
            self._requests[(code, path)] = self._requests.get((code, path), 0) + 1
            hist = self._durations.setdefault(path, _Histogram())
            i = bisect.bisect_left(BUCKETS, seconds)  # le is inclusive: 0.005 belongs to le="0.005"
            if i < len(BUCKETS):
                hist.counts[i] += 1
            hist.total += seconds
            hist.count += 1

    def render(self) -> str:
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted(
                (path, _Histogram(list(h.counts), h.total, h.count)) for path, h in self._durations.items()
            )
        lines = [
            "# HELP http_requests_total HTTP requests handled, by status code and route.",
            "# TYPE http_requests_total counter",
        ]
        lines += [f'http_requests_total{{code="{code}",path="{path}"}} {n}' for (code, path), n in requests]
        lines += [
            "# HELP http_request_duration_seconds Time to handle an HTTP request, by route.",
            "# TYPE http_request_duration_seconds histogram",
        ]
        for path, hist in durations:
            cumulative = 0
            for le, n in zip(BUCKETS, hist.counts, strict=False):
                cumulative += n
                lines.append(f'http_request_duration_seconds_bucket{{path="{path}",le="{le:g}"}} {cumulative}')
            lines.append(f'http_request_duration_seconds_bucket{{path="{path}",le="+Inf"}} {hist.count}')
            lines.append(f'http_request_duration_seconds_sum{{path="{path}"}} {hist.total!r}')
            lines.append(f'http_request_duration_seconds_count{{path="{path}"}} {hist.count}')
        lines += [
            "# HELP app_info The running version of the app.",
            "# TYPE app_info gauge",
            f'app_info{{version="{self._version}"}} 1',
        ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTTP


class Service:
    """What the request handler needs to know: the app's routes and state."""

    def __init__(self, name: str, version: str, config: dict[str, Any], routes: dict[str, Route]) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.routes = routes
        self.metrics = Metrics(version)
        self.known_paths = frozenset(routes) | frozenset(BUILTIN_PATHS)
        # Set once by the main thread, read by handler threads: a plain bool is enough.
        self.draining = False

    def healthz(self, _query: Query) -> tuple[int, dict[str, Any]]:
        if self.draining:
            return 503, {"status": "draining"}
        if self.config["fault_healthz"]:
            return 503, {"status": "fault"}
        return 200, {"status": "ok"}

    def version_info(self, _query: Query) -> tuple[int, dict[str, Any]]:
        return 200, {"name": self.name, "version": self.version}


def _make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    builtin: dict[str, Route] = {"/healthz": service.healthz, "/version": service.version_info}

    def dispatch(path: str, query: str) -> tuple[int, dict[str, Any]]:
        route = builtin.get(path) or service.routes.get(path)
        if route is None:
            return 404, {"error": "not found"}
        try:
            return route(parse_qs(query, keep_blank_values=True))
        except Exception as e:  # a bug in one route must still get an answer, and a log line
            log("error", "unhandled exception", path=path, error=repr(e))
            return 500, {"error": "internal error"}

    class Handler(BaseHTTPRequestHandler):
        server_version = f"{service.name}/{service.version}"
        sys_version = ""  # do not advertise the Python version
        timeout = CLIENT_TIMEOUT_SECONDS

        def do_GET(self) -> None:
            start = time.perf_counter()
            url = urlsplit(self.path)
            if url.path == "/metrics":
                code, content_type, payload = 200, METRICS_CONTENT_TYPE, service.metrics.render().encode()
            else:
                code, body = dispatch(url.path, url.query)
                content_type, payload = "application/json", json.dumps(body).encode()
            elapsed = time.perf_counter() - start
            # Count the request before answering it, so a client that has its
            # answer also sees it in the next scrape.
            service.metrics.observe(code, url.path if url.path in service.known_paths else "other", elapsed)
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            log(
                "info",
                "request",
                method="GET",
                path=url.path,
                code=code,
                duration_ms=round(elapsed * 1000, 3),
                remote=self.client_address[0],
            )

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # do_GET logs each request itself, with its duration

        def log_message(self, format: str, *args: Any) -> None:
            # What is left are the stdlib's own errors (bad request line,
            # unsupported method, timeouts): keep them in the JSON log too.
            log("warning", format % args, remote=self.client_address[0])

    return Handler


class _Server(ThreadingHTTPServer):
    # ThreadingHTTPServer's handler threads are daemons, which server_close()
    # does not wait for: in-flight requests would be cut off at exit.
    daemon_threads = False
    # socketserver's default listen backlog is 5: a burst of new connections
    # (every request is one, HTTP/1.0) would be refused while threads start.
    request_queue_size = 128


class _Server6(_Server):
    address_family = socket.AF_INET6


def _notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd, for units with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def serve(service: Service) -> int:
    config = service.config
    address = config["listen_address"]
    server_class = _Server6 if ipaddress.ip_address(address).version == 6 else _Server
    # Block SIGTERM and SIGINT before any thread starts (threads inherit the
    # mask) and take them with sigwait in the main thread: no async signal
    # handler, so no lock can be re-entered from one.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = server_class((address, config["port"]), _make_handler(service))
    except OSError as e:
        log("error", "cannot listen", address=address, port=config["port"], error=e.strerror)
        return 1
    thread = threading.Thread(target=server.serve_forever, name="http")
    thread.start()
    log("info", "listening", address=address, port=config["port"], name=service.name, version=service.version)
    _notify_systemd("READY=1")

    signum = signal.sigwait(stop_signals)
    # Fail the health check first and keep serving for a while, so load
    # balancers and health-gated deploys move traffic away before we go.
    service.draining = True
    _notify_systemd("STOPPING=1")
    log("info", "draining", signal=signal.Signals(signum).name, drain_seconds=config["drain_seconds"])
    time.sleep(config["drain_seconds"])

    server.shutdown()  # stop accepting: serve_forever returns
    thread.join()
    server.server_close()  # waits for the in-flight requests' threads
    log("info", "stopped")
    return 0


def main(
    name: str,
    version: str,
    defaults: dict[str, Any],
    checks: dict[str, Check],
    make_routes: Callable[[dict[str, Any]], dict[str, Route]],
) -> int:
    """Command line entry point shared by the apps. `defaults` and `checks`
    are the app's own config keys, added to the common ones; `defaults` must
    give the app's `port`."""
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("--config", metavar="PATH", help=f"JSON config file, e.g. /etc/{name}/{name}.json")
    parser.add_argument("--version", action="version", version=f"{name} {version}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the config file and exit: 0 when the app would start with it, 2 otherwise",
    )
    args = parser.parse_args()
    try:
        config = load_config(args.config, {**COMMON_DEFAULTS, **defaults}, {**COMMON_CHECKS, **checks})
    except ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{name}: {args.config or 'the defaults'}: configuration ok")
        return 0
    return serve(Service(name, version, config, make_routes(config)))
