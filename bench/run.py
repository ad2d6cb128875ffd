#!/usr/bin/env python3
"""Benchmarks of the things a user waits for, written down with the machine.

    bench/run.py [--rounds 2]

On a fresh lab: building the packages from nothing, bringing the lab up,
the first converge of site.yml, log shipping's throughput, then the no-op
rerun (every host changed=0) with three settings side by side, in rounds so
that a noisy moment hits all three alike:

  stock    an ansible.cfg with only the paths, force_handlers and the interpreter
  linear   the project's ansible.cfg with ANSIBLE_STRATEGY=linear (Mitogen off)
  ours     the project's ansible.cfg as it is (Mitogen's mitogen_linear)

Log shipping: one client (app2) logs numbered lines through its journal as
fast as its transient units can; the figure is messages per second from the
first line sent until the last one is in the aggregator's file (journal ->
rsyslog -> RELP over mutual TLS -> logs1), with the number lost, which must
be 0.

The mesh: greeter's latency (p50/p90/p99) and failures at 500 and 1000
requests a second, straight to greeter on app2 and from app1 through both
Envoys and mutual TLS, in the same run (bench/load.py on the lab host); then
the wall time of rotate-certs.yml while frontend on app1 asks greeter through
the mesh 200 times a second, with the failed requests, which must be 0.

Adds the memory of each lab host and the time of every test level of the
last `make test` (.cache/reports/timings.json), then writes
bench/RESULTS.md and bench/results.json; every step's output is kept in
.cache/bench/ (a converge's log ends with its slowest tasks).  It recreates
the lab, so run it when nothing else uses it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
TIMINGS = ROOT / ".cache" / "reports" / "timings.json"
LOGS = ROOT / ".cache" / "bench"
_RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

# "Stock": what a team starts from, only what the repository cannot run without.
STOCK_CFG = """[defaults]
force_handlers = True
inventory = {root}/inventories/lab/hosts.yml
roles_path = {root}/roles
library = {root}/library
collections_path = {root}/collections
action_plugins = {root}/plugins/action
filter_plugins = {root}/plugins/filter
interpreter_python = /usr/bin/python3
"""


def env(**extra: str) -> dict:
    e = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab" / "containers.conf"), ANSIBLE_NOCOLOR="1", **extra)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def timed(label: str, cmd: list[str], noop: bool = False, **extra_env: str) -> float:
    print(f"bench: {label} ...", flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    elapsed = time.monotonic() - started
    # Every step's output is kept (profile_tasks lists the slowest tasks of a converge).
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / (re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".log")).write_text(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"bench: {label} failed:\n{proc.stdout[-3000:]}")
    if noop:
        changed = {host: int(c) for host, c, _, _ in _RECAP.findall(proc.stdout) if int(c)}
        if changed:
            sys.exit(f"bench: {label} was not a no-op run, it changed {changed}")
    print(f"bench: {label}: {elapsed:.1f} s", flush=True)
    return elapsed


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    podman = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kib / 1024 / 1024:.0f} GiB, "
        f"Linux {platform.release()}, {podman}, Python {platform.python_version()}"
    )


def host_memory() -> dict[str, str]:
    out = subprocess.run(
        ["podman", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    usage = {}
    for line in sorted(out.splitlines()):
        name, _, mem = line.partition(" ")
        if name.startswith("sl-") and not name.startswith("sl-molecule"):
            usage[name] = mem.split("/")[0].strip()
    return usage


LOG_CLIENT = "app2.sevenleague.test"
LOG_AGGREGATOR = "logs1.sevenleague.test"


def on_host(host: str, command: str) -> str:
    return subprocess.run(
        ["ssh", "-F", str(ROOT / ".lab" / "ssh" / "config"), host, command], check=True, capture_output=True, text=True
    ).stdout


def log_throughput(units: int = 5, per_unit: int = 8000) -> dict:
    """Numbered lines from LOG_CLIENT until every one is at LOG_AGGREGATOR. Each transient unit
    sends `per_unit` lines, under journald's default burst of 10 000 per unit and 30 s."""
    tag = f"sl-bench-{int(time.time())}"
    total = units * per_unit
    path = f"/var/log/hosts/{LOG_CLIENT}/{tag}.log"
    print(f"bench: log shipping, {total} lines ...", flush=True)
    started = time.monotonic()
    on_host(
        LOG_CLIENT,
        " & ".join(
            f"systemd-run --quiet --wait --unit {tag}-{k} sh -c "
            f"'seq {k * per_unit + 1} {(k + 1) * per_unit} | sed s/^/n=/ | logger -t {tag}'"
            for k in range(units)
        )
        + " & wait",
    )
    sent = time.monotonic() - started
    arrived, last_change, deadline = 0, time.monotonic(), time.monotonic() + 600
    while time.monotonic() < deadline:
        count = int(on_host(LOG_AGGREGATOR, f"grep -c 'n=' {path} 2>/dev/null || true").strip() or 0)
        if count != arrived:
            arrived, last_change = count, time.monotonic()
        if arrived >= total or time.monotonic() - last_change > 60:
            break
        time.sleep(0.5)
    elapsed = last_change - started
    distinct = int(on_host(LOG_AGGREGATOR, f"grep -o 'n=[0-9]*' {path} | sort -u | wc -l").strip())
    result = {
        "messages": total,
        "sent_seconds": round(sent, 1),
        "seconds": round(elapsed, 1),
        "per_second": round(distinct / elapsed),
        "lost": total - distinct,
        "duplicates": arrived - distinct,
    }
    print(f"bench: log shipping: {result}", flush=True)
    return result


MESH_CALLER, MESH_CALLEE = "app1.sevenleague.test", "app2.sevenleague.test"
LOAD_TOOL = ROOT / "bench" / "load.py"


def load(host: str, url: str, rate: float, seconds: float) -> dict:
    """bench/load.py on `host` at a fixed rate; its JSON report."""
    on_host(host, f"cat > /run/sl-bench-load.py <<'EOF'\n{LOAD_TOOL.read_text()}\nEOF")
    return json.loads(on_host(host, f"python3 /run/sl-bench-load.py '{url}' --rate {rate} --duration {seconds}"))


def mesh_latency(rates=(500, 1000), seconds: float = 15) -> list[dict]:
    """greeter's /hello at fixed rates, in the same run: from app2 straight to greeter on its
    loopback, and from app1 through its Envoy, mutual TLS and app2's Envoy to the same greeter."""
    rows = []
    for rate in rates:
        for path, host, url in (
            ("direct (app2 -> greeter)", MESH_CALLEE, "http://127.0.0.1:8081/hello"),
            ("mesh (app1 -> Envoy -> mTLS -> Envoy -> greeter)", MESH_CALLER, "http://127.0.0.1:10001/hello"),
        ):
            print(f"bench: {path} at {rate}/s ...", flush=True)
            report = load(host, url, rate, seconds)
            rows.append({"path": path, **report})
            print(f"bench: {path} at {rate}/s: {report['latency_ms']}, {report['failed']} failed", flush=True)
    return rows


def rotation_under_load(rate: float = 200) -> dict:
    """rotate-certs.yml on the whole lab while app1's frontend asks greeter through the mesh."""
    on_host(
        MESH_CALLER, f"rm -f /run/sl-bench-stop && cat > /run/sl-bench-load.py <<'EOF'\n{LOAD_TOOL.read_text()}\nEOF"
    )
    on_host(
        MESH_CALLER,
        "systemd-run --unit sl-bench-load --collect -p StandardOutput=file:/run/sl-bench-load.json "
        f"python3 /run/sl-bench-load.py 'http://127.0.0.1:8080/?name=bench' --rate {rate} "
        "--duration 900 --until-file /run/sl-bench-stop",
    )
    try:
        seconds = timed(
            "rotate-certs.yml under load", [str(VENV_BIN / "ansible-playbook"), "playbooks/rotate-certs.yml"]
        )
    finally:
        on_host(
            MESH_CALLER, "touch /run/sl-bench-stop; while systemctl is-active --quiet sl-bench-load; do sleep 0.5; done"
        )
    report = json.loads(on_host(MESH_CALLER, "cat /run/sl-bench-load.json"))
    return {**report, "playbook_seconds": round(seconds, 1)}


def markdown(report: dict) -> str:
    noop = report["noop_rerun"]
    stock = noop["stock"]["median"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (bench/run.py) on {report['date']}, commit {report['commit']};",
        "the same figures are in results.json. Earlier runs are in git history.",
        "",
        f"Machine: {report['machine']}.",
        "",
        "## site.yml on the lab (6 hosts)",
        "",
        "| what | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in report["steps"].items()]
    logs = report.get("log_shipping")
    if logs:
        lines += [
            "",
            f"Log shipping, app2 -> journal -> rsyslog -> RELP/mutual TLS -> logs1: {logs['messages']} lines "
            f"in {logs['seconds']} s, **{logs['per_second']} messages/s**, lost {logs['lost']}, "
            f"duplicates {logs['duplicates']} (journald took {logs['sent_seconds']} s to accept them).",
        ]
    mesh = report.get("mesh_latency")
    if mesh:
        lines += [
            "",
            "## The mesh",
            "",
            "greeter's `/hello` at fixed request rates (bench/load.py, open loop, a new connection per "
            "request), each for 15 s, in the same run:",
            "",
            "| path | rate asked | rate sent | p50 ms | p90 ms | p99 ms | failed |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['path']} | {r['target_rate']:.0f} | {r['rate']:.0f} | {r['latency_ms']['p50']} | "
            f"{r['latency_ms']['p90']} | {r['latency_ms']['p99']} | {r['failed']} |"
            for r in mesh
        ]
    rotation = report.get("rotation_under_load")
    if rotation:
        lines += [
            "",
            f"`rotate-certs.yml` on the whole lab took {rotation['playbook_seconds']} s while frontend on app1 "
            f"asked greeter through the mesh at {rotation['rate']:.0f} requests/s: {rotation['sent']} "
            f"requests, **{rotation['failed']} failed** (p99 {rotation['latency_ms']['p99']} ms).",
        ]
    lines += [
        "",
        f"No-op rerun (every host changed=0), {report['rounds']} rounds side by side:",
        "",
        "| ansible.cfg | median s | runs s | vs stock |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("stock", "stock (paths, force_handlers, interpreter)"),
        ("linear", "ours, ANSIBLE_STRATEGY=linear"),
        ("ours", "ours (mitogen_linear)"),
    ):
        runs = ", ".join(f"{s:.1f}" for s in noop[name]["runs"])
        lines.append(f"| {label} | {noop[name]['median']:.1f} | {runs} | {stock / noop[name]['median']:.2f}x |")
    lines += [
        "",
        "Memory per lab host after converge (podman stats, which counts the page cache too):",
        "",
        "| host | memory |",
        "|---|---|",
    ]
    lines += [f"| {name} | {mem} |" for name, mem in report["memory"].items()]
    tests = report.get("tests")
    if tests:
        lines += [
            "",
            f"## make test ({tests.get('date', '?')}, commit {tests.get('commit', '?')}, "
            f"{tests.get('jobs', '?')} jobs at a time)",
            "",
            "| step | seconds | budget |",
            "|---|---|---|",
        ]
        lines += [
            f"| {step['what']} | {step['seconds']:.0f} | {step.get('budget') or '-'} |" for step in tests["steps"]
        ]
        lines.append(f"| total | {tests['total']:.0f} | {tests.get('total_budget') or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="no-op reruns per setting (default 2)")
    args = parser.parse_args()
    lab = [str(VENV_BIN / "python"), str(ROOT / "lab" / "lab.py")]
    playbook = [str(VENV_BIN / "ansible-playbook"), "site.yml"]
    steps = {}
    with tempfile.TemporaryDirectory(prefix="sl-bench-") as tmp:
        seconds = timed(
            "build the packages", [str(VENV_BIN / "python"), str(ROOT / "packaging" / "build.py"), "--out", tmp]
        )
        steps[f"make debs, from nothing ({len(list(Path(tmp).glob('*.deb')))} packages)"] = seconds
        stock_cfg = Path(tmp) / "ansible.cfg"
        stock_cfg.write_text(STOCK_CFG.format(root=ROOT))
        timed("remove the lab", [*lab, "down"])
        steps["lab up, 6 fresh hosts (images built)"] = timed("bring up a fresh lab", [*lab, "up"])
        steps["site.yml, first converge (packages built)"] = timed("first converge", playbook)
        log_shipping = log_throughput()
        latency = mesh_latency()
        rotation = rotation_under_load()
        settings = {"stock": {"ANSIBLE_CONFIG": str(stock_cfg)}, "linear": {"ANSIBLE_STRATEGY": "linear"}, "ours": {}}
        runs: dict[str, list[float]] = {name: [] for name in settings}
        for round_ in range(1, args.rounds + 1):
            for name, extra in settings.items():
                runs[name].append(timed(f"no-op rerun, {name}, round {round_}", playbook, noop=True, **extra))
    report = {
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine(),
        "rounds": args.rounds,
        "steps": steps,
        "noop_rerun": {name: {"runs": r, "median": statistics.median(r)} for name, r in runs.items()},
        "log_shipping": log_shipping,
        "mesh_latency": latency,
        "rotation_under_load": rotation,
        "memory": host_memory(),
    }
    if TIMINGS.exists():
        report["tests"] = json.loads(TIMINGS.read_text())
    (ROOT / "bench" / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (ROOT / "bench" / "RESULTS.md").write_text(markdown(report))
    speedup = report["noop_rerun"]["stock"]["median"] / report["noop_rerun"]["ours"]["median"]
    print(f"bench: no-op rerun {speedup:.2f}x faster than stock; bench/RESULTS.md and bench/results.json written")
    # Speed is written down, not judged; a lost message or a failed request in a rotation is a failure.
    return 1 if log_shipping["lost"] or rotation["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
