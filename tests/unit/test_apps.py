"""The sample apps under apps/, run as real processes on 127.0.0.1, laid out
as their packages install them: the app's script with svc.py next to it."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("greeter", "frontend")
START_TIMEOUT = 10.0
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf")


def app_version(app: str) -> str:
    source = (ROOT / "apps" / app / f"{app}.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', source, re.M)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    # Nothing from the test run may leak into the app: it must find svc.py by
    # itself, and only talk to systemd when a test says so.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET")}
    return {**env, **extra}


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class App:
    proc: subprocess.Popen
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 5.0) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return Response(response.status, response.getheader("Content-Type", ""), response.read())
        finally:
            conn.close()

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"app exited with {self.proc.returncode}: {self.stderr.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"app not listening on port {self.port} after {START_TIMEOUT} s")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.read_text().splitlines()]


@pytest.fixture(scope="session")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each app in its own directory with svc.py, as in /usr/lib/<app>/."""
    lib = tmp_path_factory.mktemp("lib")
    for app in APPS:
        (lib / app).mkdir()
        shutil.copy(ROOT / "apps" / app / f"{app}.py", lib / app)
        shutil.copy(ROOT / "apps" / "common" / "svc.py", lib / app)
    return {app: lib / app / f"{app}.py" for app in APPS}


@pytest.fixture
def start(scripts: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., App]]:
    """start(app, **config) runs the app with a temporary config file on a free
    port and waits until it listens; every app started is stopped afterwards."""
    started: list[App] = []

    def _start(app: str, *, env: dict[str, str] | None = None, wait: bool = True, **config: Any) -> App:
        n = len(started)
        config = {"port": free_port(), "drain_seconds": 0, **config}
        config_file = tmp_path / f"{app}{n}.json"
        config_file.write_text(json.dumps(config))
        stdout, stderr = tmp_path / f"{app}{n}.out", tmp_path / f"{app}{n}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(scripts[app]), "--config", str(config_file)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env or child_env(),
            )
        running = App(proc, config["port"], stdout, stderr)
        started.append(running)
        if wait:
            running.wait_listening()
        return running

    yield _start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


@pytest.fixture
def silent_upstream() -> Iterator[socket.socket]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a Prometheus text exposition, checking that every sample
    belongs to a family announced before it by # HELP and # TYPE."""
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps and kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
        else:
            m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
            assert m, f"not a sample line: {line!r}"
            name, label_text, value = m.groups()
            labels = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*)"', label_text or "")
            assert ",".join(f'{k}="{v}"' for k, v in labels) == (label_text or ""), line
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types, f"sample before its # TYPE: {line!r}"
            samples[(name, frozenset(labels))] = float(value)
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------- greeter


def test_hello_greets_by_name_and_defaults_to_world(start):
    greeter = start("greeter")
    response = greeter.get("/hello?name=Ada%20Lovelace")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.json() == {
        "greeting": "Hello, Ada Lovelace!",
        "host": socket.gethostname(),
        "version": app_version("greeter"),
    }
    assert greeter.get("/hello").json()["greeting"] == "Hello, world!"
    assert greeter.get("/hello?name=" + "x" * 64).status == 200


@pytest.mark.parametrize("query", ["name=" + "x" * 65, "name=", "name=a%0Ab", "name=%07", "name=%1b%5b2J"])
def test_hello_refuses_long_empty_or_unprintable_names(start, query):
    response = start("greeter").get(f"/hello?{query}")
    assert response.status == 400
    assert "64 printable characters" in response.json()["error"]


def test_unknown_path_is_a_json_404(start):
    response = start("greeter").get("/nope")
    assert (response.status, response.json()) == (404, {"error": "not found"})


# ---------------------------------------------------------------- both apps


@pytest.mark.parametrize("app", APPS)
def test_healthz_ok(start, app):
    response = start(app).get("/healthz")
    assert (response.status, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("app", APPS)
def test_healthz_fails_when_the_fault_switch_is_on(start, app):
    running = start(app, fault_healthz=True)
    assert running.get("/healthz").status == 503
    assert running.get("/version").status == 200  # only the health check is broken


@pytest.mark.parametrize("app", APPS)
def test_version_endpoint_and_flag_agree_with_the_module(start, scripts, app):
    version = app_version(app)
    assert start(app).get("/version").json() == {"name": app, "version": version}
    flag = subprocess.run(
        [sys.executable, str(scripts[app]), "--version"], capture_output=True, text=True, env=child_env(), timeout=10
    )
    assert (flag.returncode, flag.stdout.strip()) == (0, f"{app} {version}")


def test_metrics_count_requests_by_code_and_known_route(start):
    greeter = start("greeter")
    for path in ["/hello", "/hello?name=Ada", "/hello?name=Bob", "/hello?name=", "/nope", "/secret/../x"]:
        greeter.get(path)

    first = greeter.get("/metrics")
    assert first.status == 200
    assert first.content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_metrics(first.body.decode())
    assert sample(samples, "http_requests_total", code="200", path="/hello") == 3
    assert sample(samples, "http_requests_total", code="400", path="/hello") == 1
    # Unknown paths share one label value, so a scanner cannot blow up the series count.
    assert sample(samples, "http_requests_total", code="404", path="other") == 2
    assert {dict(labels)["path"] for name, labels in samples if name == "http_requests_total"} == {"/hello", "other"}
    assert sample(samples, "app_info", version=app_version("greeter")) == 1

    buckets = [sample(samples, "http_request_duration_seconds_bucket", path="/hello", le=le) for le in BUCKETS]
    assert all(
        ("http_request_duration_seconds_bucket", frozenset({("path", "/hello"), ("le", le)})) in samples
        for le in BUCKETS
    )
    assert buckets == sorted(buckets), "buckets must be cumulative"
    assert buckets[-1] == sample(samples, "http_request_duration_seconds_count", path="/hello") == 4
    assert 0 < sample(samples, "http_request_duration_seconds_sum", path="/hello") < 4 * 5

    greeter.get("/hello")
    samples = parse_metrics(greeter.get("/metrics").body.decode())
    assert sample(samples, "http_requests_total", code="200", path="/hello") == 4
    assert sample(samples, "http_request_duration_seconds_count", path="/hello") == 5
    assert sample(samples, "http_requests_total", code="200", path="/metrics") == 1  # the first scrape


def test_json_log_lines(start):
    greeter = start("greeter")
    greeter.get("/hello?name=Ada")
    greeter.get("/nope")
    assert greeter.stop() == 0

    logs = greeter.logs()
    for entry in logs:
        assert entry["level"] in ("info", "warning", "error")
        assert isinstance(entry["msg"], str)
        datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    requests = [e for e in logs if e["msg"] == "request"]
    # A handler thread logs after its response went out, so the next request's line may come
    # first: one line per request, in any order.
    assert sorted((e["method"], e["path"], e["code"], e["remote"]) for e in requests) == [
        ("GET", "/hello", 200, "127.0.0.1"),
        ("GET", "/nope", 404, "127.0.0.1"),
    ]
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in requests)
    assert "Ada" not in greeter.stdout.read_text(), "query strings stay out of the logs"
    assert [e["msg"] for e in logs if e["msg"] != "request"] == ["listening", "draining", "stopped"]


# ---------------------------------------------------------------- shutdown and readiness


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_while_serving_then_exits_zero(start, sig):
    greeter = start("greeter", drain_seconds=1.0)
    assert greeter.get("/healthz").status == 200
    signalled = time.monotonic()
    greeter.proc.send_signal(sig)

    deadline = signalled + 0.9
    while (health := greeter.get("/healthz")).status == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (health.status, health.json()) == (503, {"status": "draining"})
    assert greeter.get("/hello").status == 200, "still serving while draining"

    assert greeter.proc.wait(10) == 0
    assert time.monotonic() - signalled >= 0.9, "exited before the drain time was over"
    messages = [e["msg"] for e in greeter.logs()]
    assert messages[-1] == "stopped" and "draining" in messages


def test_in_flight_request_is_answered_before_exit(start, silent_upstream):
    frontend = start(
        "frontend", upstream_url=f"http://127.0.0.1:{silent_upstream.getsockname()[1]}", upstream_timeout_seconds=1.0
    )
    answers: list[int] = []
    client = threading.Thread(target=lambda: answers.append(frontend.get("/").status))
    client.start()
    silent_upstream.settimeout(5)
    conn, _ = silent_upstream.accept()  # the request is now waiting on the upstream
    with conn:
        frontend.proc.send_signal(signal.SIGTERM)
        client.join(10)
        assert answers == [502], "the in-flight request must get its answer, not a reset"
        assert frontend.proc.wait(10) == 0


def test_systemd_readiness_notification(start):
    name = f"sevenleague-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)  # abstract namespace, as NOTIFY_SOCKET="@..." means
        notify.settimeout(START_TIMEOUT)
        greeter = start("greeter", env=child_env(NOTIFY_SOCKET="@" + name), wait=False)
        assert notify.recv(64) == b"READY=1"
        assert greeter.get("/healthz").status == 200, "READY=1 means it is listening"
        greeter.proc.send_signal(signal.SIGTERM)
        assert notify.recv(64) == b"STOPPING=1"
        assert greeter.proc.wait(10) == 0


# ---------------------------------------------------------------- frontend


def test_frontend_gets_its_greeting_from_greeter(start):
    greeter = start("greeter")
    frontend = start("frontend", upstream_url=greeter.url + "/")
    response = frontend.get("/?name=Ada")
    assert response.status == 200
    body = response.json()
    assert (body["name"], body["version"], body["host"]) == ("frontend", app_version("frontend"), socket.gethostname())
    assert body["greeter"] == {
        "greeting": "Hello, Ada!",
        "host": socket.gethostname(),
        "version": app_version("greeter"),
    }
    assert frontend.get("/").json()["greeter"]["greeting"] == "Hello, world!"
    # Greeter refusing the caller's input is the caller's error, not a bad gateway.
    refused = frontend.get("/?name=" + "x" * 65)
    assert refused.status == 400
    assert "64 printable characters" in refused.json()["error"]


def test_frontend_answers_502_at_once_when_upstream_is_down(start):
    frontend = start("frontend", upstream_url=f"http://127.0.0.1:{free_port()}", upstream_timeout_seconds=5.0)
    began = time.monotonic()
    response = frontend.get("/")
    assert (response.status, response.json()["error"]) == (502, "upstream failed")
    assert time.monotonic() - began < 2
    assert any(e["msg"] == "upstream failed" for e in frontend.logs())


def test_frontend_answers_502_when_upstream_times_out(start, silent_upstream):
    frontend = start(
        "frontend", upstream_url=f"http://127.0.0.1:{silent_upstream.getsockname()[1]}", upstream_timeout_seconds=0.5
    )
    began = time.monotonic()
    response = frontend.get("/")
    elapsed = time.monotonic() - began
    assert response.status == 502
    assert 0.4 <= elapsed < 3, f"upstream timeout not honoured: {elapsed:.2f} s"


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "app, config, key",
    [
        ("greeter", {"colour": "blue"}, "colour"),
        ("greeter", {"port": "8081"}, "port"),
        ("greeter", {"port": True}, "port"),
        ("greeter", {"port": 70000}, "port"),
        ("greeter", {"fault_healthz": "yes"}, "fault_healthz"),
        ("greeter", {"drain_seconds": -1}, "drain_seconds"),
        ("greeter", {"listen_address": "localhost"}, "listen_address"),
        ("greeter", {"upstream_url": "http://127.0.0.1:1"}, "upstream_url"),  # a frontend key
        ("frontend", {"upstream_timeout_seconds": "2"}, "upstream_timeout_seconds"),
        ("frontend", {"upstream_timeout_seconds": 0}, "upstream_timeout_seconds"),
        ("frontend", {"upstream_url": "ftp://127.0.0.1"}, "upstream_url"),
    ],
)
def test_bad_config_exits_2_naming_the_key(scripts, tmp_path, app, config, key):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, str(scripts[app]), "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=10,
    )
    assert result.returncode == 2
    assert f"'{key}'" in result.stderr
    assert result.stdout == "", "must not start"


@pytest.mark.parametrize(
    "content, message", [(None, "cannot read"), ("{", "not valid JSON"), ("[]", "must be a JSON object")]
)
def test_unreadable_config_exits_2(scripts, tmp_path, content, message):
    config_file = tmp_path / "config.json"
    if content is not None:
        config_file.write_text(content)
    result = subprocess.run(
        [sys.executable, str(scripts["greeter"]), "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=10,
    )
    assert result.returncode == 2
    assert message in result.stderr and str(config_file) in result.stderr


@pytest.mark.parametrize("app", APPS)
def test_check_config_accepts_a_good_file_and_refuses_a_bad_one_without_starting(scripts, tmp_path, app):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"port": 18080, "drain_seconds": 1}))
    bad.write_text(json.dumps({"port": "18080"}))
    ok = subprocess.run(
        [sys.executable, str(scripts[app]), "--config", str(good), "--check-config"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=10,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{app}: {good}: configuration ok"), ok.stderr
    refused = subprocess.run(
        [sys.executable, str(scripts[app]), "--config", str(bad), "--check-config"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=10,
    )
    assert refused.returncode == 2 and "'port'" in refused.stderr
