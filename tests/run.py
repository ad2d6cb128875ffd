#!/usr/bin/env python3
"""Run sevenleague's test levels and count every result.

    tests/run.py lint             ansible-lint (production profile), yamllint
    tests/run.py unit             pytest tests/unit
    tests/run.py roles [ROLE...]  every Molecule scenario of the roles (all roles by default)
    tests/run.py system           a fresh lab, site.yml twice, pytest tests/system
    tests/run.py all              all of the above, in that order

Each pytest test counts once; lint tools and Molecule scenarios count once
each, plus the testinfra tests their verify step ran.  The last line is
`N passed, N failed`; the exit code is non-zero when anything failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / ".cache" / "reports"
VENV_BIN = ROOT / ".venv" / "bin"


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, name: str, ok: bool) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(name)


def env() -> dict:
    """Molecule calls ansible-config from PATH, so the venv's bin comes first."""
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e["CONTAINERS_CONF"] = str(ROOT / "lab" / "containers.conf")
    e["ANSIBLE_FORCE_COLOR"] = "0"
    e["PY_COLORS"] = "0"
    e["NO_COLOR"] = "1"
    return e


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(cmd: list[str], log: Path | None = None, cwd: Path = ROOT) -> int:
    """Run a command; stream its output, and keep a copy in `log`."""
    print("$ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    with subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        sink = log.open("w") if log else None
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                if sink:
                    sink.write(line)
        finally:
            if sink:
                sink.close()
    print(f"({time.monotonic() - started:.0f}s, exit {proc.returncode})", flush=True)
    return proc.returncode


def count_junit(path: Path, tally: Tally, prefix: str) -> bool:
    """Add the cases of a JUnit XML report; False if there is no report."""
    if not path.exists():
        return False
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{prefix}{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("skipped") is not None:
            tally.skipped += 1
        else:
            tally.add(name, case.find("failure") is None and case.find("error") is None)
    return True


def pytest_level(name: str, args: list[str], tally: Tally) -> None:
    report = REPORTS / f"{name}.xml"
    report.unlink(missing_ok=True)
    rc = run([str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", f"--junitxml={report}", *args])
    if not count_junit(report, tally, f"{name}: ") or rc not in (0, 1):
        # pytest could not even run its tests (collection error, bad option).
        tally.add(f"{name}: pytest run (exit {rc})", False)


def lint(tally: Tally) -> None:
    banner("lint")
    tally.add("lint: yamllint", run([str(VENV_BIN / "yamllint"), "--strict", "."]) == 0)
    tally.add("lint: ansible-lint (production profile)",
              run([str(VENV_BIN / "ansible-lint"), "--profile", "production"]) == 0)


def unit(tally: Tally) -> None:
    banner("unit")
    pytest_level("unit", ["tests/unit"], tally)


def scenarios(roles: list[str] | None) -> list[tuple[str, str]]:
    found = []
    for scenario_file in sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")):
        role = scenario_file.parents[2].name
        if roles and role not in roles:
            continue
        found.append((role, scenario_file.parent.name))
    return found


_PYTEST_SUMMARY = re.compile(r"=+ (.*) in [\d.]+s")


def molecule_level(tally: Tally, roles: list[str] | None) -> None:
    banner("roles (Molecule)")
    todo = scenarios(roles)
    if roles and not todo:
        tally.add(f"roles: no Molecule scenario for {', '.join(roles)}", False)
    for role, scenario in todo:
        log = REPORTS / f"molecule-{role}-{scenario}.log"
        rc = run([str(VENV_BIN / "molecule"), "test", "-s", scenario], log=log, cwd=ROOT / "roles" / role)
        tally.add(f"molecule: {role}/{scenario} (converge, idempotence, check, verify)", rc == 0)
        # The verify step's testinfra summary, e.g. "12 passed, 1 failed in 50s".
        summaries = _PYTEST_SUMMARY.findall(log.read_text(errors="replace"))
        if summaries:
            counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|error|errors)", summaries[-1]))
            tally.passed += counts.get("passed", 0)
            failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
            tally.failed += failed
            if failed:
                tally.failures.append(f"molecule: {role}/{scenario} testinfra ({failed} failed)")


def system(tally: Tally) -> None:
    banner("system (lab)")
    lab = [str(VENV_BIN / "python"), str(ROOT / "lab" / "lab.py")]
    # A fresh lab: containers left from an earlier run may hold another key or state.
    if run([*lab, "down"]) != 0 or run([*lab, "up"]) != 0:
        tally.add("system: lab up", False)
        return
    pytest_level("system", ["tests/system"], tally)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", choices=["lint", "unit", "roles", "system", "all"])
    parser.add_argument("roles", nargs="*", help="roles for the roles level (default: all)")
    args = parser.parse_args()
    REPORTS.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    started = time.monotonic()
    if args.level in ("lint", "all"):
        lint(tally)
    if args.level in ("unit", "all"):
        unit(tally)
    if args.level in ("roles", "all"):
        molecule_level(tally, args.roles or None)
    if args.level in ("system", "all"):
        system(tally)
    banner(f"summary ({time.monotonic() - started:.0f}s)")
    for name in tally.failures:
        print(f"FAILED {name}")
    line = f"{tally.passed} passed, {tally.failed} failed"
    if tally.skipped:
        line += f", {tally.skipped} skipped"
    print(line, flush=True)
    return 1 if tally.failed or not tally.passed else 0


if __name__ == "__main__":
    sys.exit(main())
