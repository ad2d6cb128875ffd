#!/usr/bin/env python3
"""Benchmarks of the things a user waits for, written down with the machine.

    bench/run.py [--out bench/RESULTS.md]

Measures, on the lab: building the packages from nothing, bringing up a
fresh lab, the first converge of site.yml, a second converge (nothing to
change), and the memory each lab host uses afterwards.  Appends a dated
section with the machine's description to bench/RESULTS.md.  It recreates
the lab, so run it when nothing else uses it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"


def env() -> dict:
    e = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab" / "containers.conf"), ANSIBLE_NOCOLOR="1")
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def timed(label: str, cmd: list[str]) -> float:
    print(f"bench: {label} ...", flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bench: {label} failed:\n{proc.stdout[-3000:]}")
    print(f"bench: {label}: {elapsed:.1f} s", flush=True)
    return elapsed


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    podman = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kib / 1024 / 1024:.0f} GiB, "
            f"Linux {platform.release()}, {podman}, Python {platform.python_version()}")


def host_memory() -> dict[str, str]:
    out = subprocess.run(["podman", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
                         env=env(), capture_output=True, text=True, check=True).stdout
    usage = {}
    for line in sorted(out.splitlines()):
        name, _, mem = line.partition(" ")
        if name.startswith("sl-") and not name.startswith("sl-molecule"):
            usage[name] = mem.split("/")[0].strip()
    return usage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    lab = [str(VENV_BIN / "python"), str(ROOT / "lab" / "lab.py")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="sl-bench-debs-") as out:
        results["make debs, from nothing (4 packages)"] = timed(
            "build the packages", [str(VENV_BIN / "python"), str(ROOT / "packaging" / "build.py"), "--out", out])
    timed("remove the lab", [*lab, "down"])
    results["lab up, 6 fresh hosts (images built)"] = timed("bring up a fresh lab", [*lab, "up"])
    playbook = [str(VENV_BIN / "ansible-playbook"), "site.yml"]
    results["site.yml, first converge"] = timed("first converge", playbook)
    results["site.yml, second converge (changes nothing)"] = timed("second converge", playbook)
    memory = host_memory()

    lines = [f"## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit "
             f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}",
             "", f"Machine: {machine()}.", "", "| what | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in results.items()]
    lines += ["", "Memory per lab host after converge (podman stats, which counts the page cache too:",
              "apt's lists and archives, the published packages on the repository host):", "",
              "| host | memory |", "|---|---|"]
    lines += [f"| {name} | {mem} |" for name, mem in memory.items()]
    lines.append("")
    if not args.out.exists():
        args.out.write_text("# Benchmarks\n\nWritten by `make bench` (bench/run.py); newest last.\n\n")
    with args.out.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"bench: results appended to {args.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
