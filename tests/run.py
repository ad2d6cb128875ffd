#!/usr/bin/env python3
"""Run sevenleague's test levels, count every result and time every step.

    tests/run.py lint             ruff (check, format), yamllint, ansible-lint (production profile)
    tests/run.py unit             pytest tests/unit
    tests/run.py roles [ROLE...]  every Molecule scenario of the roles (all roles by default)
    tests/run.py system           a fresh lab, site.yml, then pytest tests/system
    tests/run.py all              all of the above

Each pytest test counts once; lint tools and Molecule scenarios count once
each, plus the testinfra tests their verify step ran.  The summary lists the
time of every level and every scenario next to its budget (tests/budget.yml),
then `N passed, N failed`; the exit code is non-zero when anything failed.

Molecule scenarios and the system level run `--jobs` at a time (default 2,
or SEVENLEAGUE_TEST_JOBS): most of their time is spent waiting on the hosts
(apt, systemd, OpenBao), not on the controller's cores.  With more than one
job, each job's output goes to its log in .cache/reports and is summed up
when the job ends; with --jobs 1 everything streams as it happens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / ".cache" / "reports"
VENV_BIN = ROOT / ".venv" / "bin"
BUDGET = ROOT / "tests" / "budget.yml"

_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    # (what, seconds), in the order the steps finished.
    times: list[tuple[str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, ok: bool) -> None:
        with self.lock:
            if ok:
                self.passed += 1
            else:
                self.failed += 1
                self.failures.append(name)

    def timed(self, what: str, seconds: float) -> None:
        with self.lock:
            self.times.append((what, seconds))


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
    say(f"\n=== {text} ===")


def run(
    cmd: list[str], log: Path | None = None, cwd: Path = ROOT, stream: bool = True, extra_env: dict | None = None
) -> int:
    """Run a command, keep a copy of its output in `log`; stream it unless told not to."""
    if stream:
        say("$ " + " ".join(cmd))
    started = time.monotonic()
    # No stdin: jobs run side by side, and Ansible refuses a stdin another process made non-blocking.
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**env(), **(extra_env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        sink = log.open("w") if log else None
        try:
            if sink:
                sink.write("$ " + " ".join(cmd) + "\n")
            for line in proc.stdout:
                if stream:
                    sys.stdout.write(line)
                if sink:
                    sink.write(line)
        finally:
            if sink:
                sink.close()
    if stream:
        say(f"({time.monotonic() - started:.0f}s, exit {proc.returncode})")
    return proc.returncode


def count_junit(path: Path, tally: Tally, prefix: str) -> bool:
    """Add the cases of a JUnit XML report; False if there is no report."""
    if not path.exists():
        return False
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{prefix}{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("skipped") is not None:
            with tally.lock:
                tally.skipped += 1
        else:
            tally.add(name, case.find("failure") is None and case.find("error") is None)
    return True


def pytest_level(name: str, args: list[str], tally: Tally, stream: bool = True) -> None:
    report = REPORTS / f"{name}.xml"
    report.unlink(missing_ok=True)
    rc = run(
        [str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", f"--junitxml={report}", *args],
        log=REPORTS / f"{name}.log",
        stream=stream,
    )
    if not count_junit(report, tally, f"{name}: ") or rc not in (0, 1):
        # pytest could not even run its tests (collection error, bad option).
        tally.add(f"{name}: pytest run (exit {rc})", False)


def lint(tally: Tally, stream: bool = True) -> None:
    for name, cmd in (
        ("ruff check", [str(VENV_BIN / "ruff"), "check", "--no-cache", "."]),
        ("ruff format", [str(VENV_BIN / "ruff"), "format", "--check", "--no-cache", "."]),
        ("yamllint", [str(VENV_BIN / "yamllint"), "--strict", "."]),
        ("ansible-lint (production profile)", [str(VENV_BIN / "ansible-lint"), "--profile", "production"]),
    ):
        log = REPORTS / f"lint-{name.split(' (')[0].replace(' ', '-')}.log"
        ok = run(cmd, log=log, stream=stream) == 0
        tally.add(f"lint: {name}", ok)
        if not ok and not stream:
            say(f"--- lint: {name} failed; the end of {log.relative_to(ROOT)}:\n{tail(log, 40)}")


def unit(tally: Tally, jobs: int, stream: bool = True) -> None:
    # One test file per worker process: a file's fixtures (a built package
    # set, an OpenBao dev server) are made once.
    parallel = ["-n", str(jobs), "--dist", "loadfile"] if jobs > 1 else []
    pytest_level("unit", [*parallel, "tests/unit"], tally, stream=stream)
    if not stream and (REPORTS / "unit.log").exists():
        say(f"--- unit: the end of .cache/reports/unit.log:\n{tail(REPORTS / 'unit.log', 15)}")


def scenarios(roles: list[str] | None) -> list[tuple[str, str]]:
    found = []
    for scenario_file in sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")):
        role = scenario_file.parents[2].name
        if roles and role not in roles:
            continue
        found.append((role, scenario_file.parent.name))
    return found


_PYTEST_SUMMARY = re.compile(r"=+ (.*) in [\d.]+s")


def tail(log: Path, lines: int = 60) -> str:
    return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])


_FAILURE = re.compile(r"^(fatal: |failed: |FAILED |E   |ERROR |CRITICAL )")


def failures(log: Path, limit: int = 60) -> str:
    """The lines that say what failed (Ansible's fatal tasks, pytest's failed
    tests and their assertion lines): the end of a log is often only the
    destroy step that follows them."""
    found = [line for line in log.read_text(errors="replace").splitlines(keepends=True) if _FAILURE.match(line)]
    return "".join(found[:limit]) + ("[...]\n" if len(found) > limit else "")


MOLECULE_CONFIG = ROOT / ".config" / "molecule"


def scenario_platforms(role: str, scenario: str) -> tuple[list[str], list[str]]:
    """The scenario's container names and podman networks (its molecule.yml)."""
    platforms = yaml.safe_load((ROOT / "roles" / role / "molecule" / scenario / "molecule.yml").read_text())
    platforms = platforms.get("platforms", [])
    return [p["name"] for p in platforms], sorted({p["network"] for p in platforms if p.get("network")})


def remove_scenario_hosts(role: str, scenario: str) -> None:
    """Remove the scenario's containers by name, at once (no shutdown: nothing on them is kept),
    and its networks."""
    names, networks = scenario_platforms(role, scenario)
    if names:
        subprocess.run(["podman", "rm", "--force", "--time", "0", *names], env=env(), capture_output=True)
    if networks:
        subprocess.run(["podman", "network", "rm", "--force", *networks], env=env(), capture_output=True)


def fresh_scenario(role: str, scenario: str) -> Path:
    """Remove what an earlier run of the scenario left (its containers, by name, and its ephemeral
    folder, which Molecule would otherwise share between checkouts of the same role), and return
    the new folder. Molecule's own first destroy then has nothing to do and is left out
    (.config/molecule/test-run.yml)."""
    remove_scenario_hosts(role, scenario)
    ephemeral = ROOT / ".cache" / "molecule" / f"{role}-{scenario}"
    shutil.rmtree(ephemeral, ignore_errors=True)
    ephemeral.mkdir(parents=True)
    return ephemeral


def molecule(role: str, scenario: str, tally: Tally, reruns: bool, stream: bool) -> None:
    """One scenario: create, prepare, converge, idempotence and check mode (left out by `make test`,
    whose lab proves both for every role at once), verify; then its containers go."""
    log = REPORTS / f"molecule-{role}-{scenario}.log"
    ephemeral = fresh_scenario(role, scenario)
    configs = [MOLECULE_CONFIG / "config.yml", MOLECULE_CONFIG / ("test-run.yml" if reruns else "make-test.yml")]
    # Molecule skips a -c file that does not exist, and would run another sequence without a word.
    missing = [str(path) for path in configs if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"Molecule settings missing: {', '.join(missing)}")
    base = [arg for path in configs for arg in ("-c", str(path))]
    try:
        rc = run(
            [str(VENV_BIN / "molecule"), *base, "test", "-s", scenario],
            log=log,
            cwd=ROOT / "roles" / role,
            stream=stream,
            extra_env={"MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral)},
        )
    finally:
        remove_scenario_hosts(role, scenario)
    steps = "converge, idempotence, check, verify" if reruns else "converge, verify"
    tally.add(f"molecule: {role}/{scenario} ({steps})", rc == 0)
    if rc != 0 and not stream:
        say(
            f"--- molecule {role}/{scenario} failed; its failures and the end of {log.relative_to(ROOT)}:\n"
            f"{failures(log)}{tail(log, 25)}"
        )
    # The verify step's testinfra summary, e.g. "12 passed, 1 failed in 50s".
    summaries = _PYTEST_SUMMARY.findall(log.read_text(errors="replace"))
    if summaries:
        counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|error|errors)", summaries[-1]))
        failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
        with tally.lock:
            tally.passed += counts.get("passed", 0)
            tally.failed += failed
            if failed:
                tally.failures.append(f"molecule: {role}/{scenario} testinfra ({failed} failed)")


def system(tally: Tally, stream: bool) -> None:
    lab = [str(VENV_BIN / "python"), str(ROOT / "lab" / "lab.py")]
    log = REPORTS / "lab.log"
    # A fresh lab: containers left from an earlier run may hold another key or state.
    if run([*lab, "down"], log=log, stream=stream) != 0 or run([*lab, "up"], log=log, stream=stream) != 0:
        tally.add("system: lab up", False)
        if not stream:
            say(f"--- lab up failed:\n{tail(log)}")
        return
    # --durations: where the level's time goes (setup lines are the fixtures'
    # playbook runs), the first thing to read when it grows.
    pytest_level("system", ["--durations=25", "tests/system"], tally, stream=stream)
    if not stream and (REPORTS / "system.log").exists():
        # pytest's own summary and the slowest steps: which system tests failed, and why.
        say(f"--- system: the end of .cache/reports/system.log:\n{tail(REPORTS / 'system.log', 70)}")


def timed(tally: Tally, what: str, step, *args) -> None:
    started = time.monotonic()
    try:
        step(*args)
    except Exception as exc:  # a crashed step is a failed step, and the others go on
        tally.add(f"{what}: {type(exc).__name__}: {exc}", False)
    finally:
        seconds = time.monotonic() - started
        tally.timed(what, seconds)
        say(f"=== {what} done in {seconds:.0f}s ===")


def run_jobs(tally: Tally, jobs: list[tuple[str, object, tuple]], parallel: int) -> None:
    """Run (name, step, args) jobs `parallel` at a time; each step takes `stream` last."""
    stream = parallel <= 1 or len(jobs) == 1
    if stream:
        for name, step, args in jobs:
            banner(name)
            timed(tally, name, step, *args, True)
        return
    say(f"running {len(jobs)} jobs, {parallel} at a time: {', '.join(name for name, _, _ in jobs)}")
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for name, step, args in jobs:
            pool.submit(timed, tally, name, step, *args, False)


def load_budget() -> dict:
    return yaml.safe_load(BUDGET.read_text()) if BUDGET.exists() else {}


def write_timings(tally: Tally, total: float, jobs: int, budget: dict) -> None:
    """A whole run's times, for `make bench` to put next to its own figures."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    (REPORTS / "timings.json").write_text(
        json.dumps(
            {
                "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                "commit": commit.stdout.strip(),
                "jobs": jobs,
                "total": total,
                "total_budget": budget.get("total"),
                "steps": [
                    {"what": what, "seconds": seconds, "budget": budget.get(what)} for what, seconds in tally.times
                ],
            },
            indent=2,
        )
        + "\n"
    )


def summary(tally: Tally, total: float, jobs: int, whole: bool) -> None:
    budget = load_budget().get("seconds", {})
    if whole:
        write_timings(tally, total, jobs, budget)
    banner(f"summary ({total:.0f}s)")
    say(f"{'step':44} {'seconds':>8} {'budget':>8}")
    for what, seconds in tally.times:
        limit = budget.get(what)
        mark = "  over budget" if limit and seconds > limit else ""
        say(f"{what:44} {seconds:8.0f} {limit or '-':>8}{mark}")
    limit = budget.get("total")
    say(f"{'total':44} {total:8.0f} {limit or '-':>8}{'  over budget' if limit and total > limit else ''}")
    for name in tally.failures:
        say(f"FAILED {name}")
    line = f"{tally.passed} passed, {tally.failed} failed"
    if tally.skipped:
        line += f", {tally.skipped} skipped"
    say(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", choices=["lint", "unit", "roles", "system", "all"])
    parser.add_argument("roles", nargs="*", help="roles for the roles level (default: all)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("SEVENLEAGUE_TEST_JOBS", "2")),
        help="Molecule scenarios and the system level at a time (default 2)",
    )
    args = parser.parse_args()
    REPORTS.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    started = time.monotonic()
    whole = args.level == "all" and args.jobs > 1
    if args.level == "lint" or (args.level == "all" and not whole):
        banner("lint")
        timed(tally, "lint", lint, tally)
    if args.level == "unit" or (args.level == "all" and not whole):
        banner("unit")
        timed(tally, "unit", unit, tally, args.jobs)
    jobs = []
    if args.level in ("system", "all"):
        # The longest job starts first, so the others fill the other slot.
        jobs.append(("system", system, (tally,)))
    if whole:
        # Lint and unit go in the pool beside the system level, which sets the
        # run's length; the unit tests then run in one process.
        jobs += [("lint", lint, (tally,)), ("unit", unit, (tally, 1))]
    if args.level in ("roles", "all"):
        todo = scenarios(args.roles or None)
        if args.roles and not todo:
            tally.add(f"roles: no Molecule scenario for {', '.join(args.roles)}", False)
        # Longest first (the budget's order of size), so the pool ends together.
        budget = load_budget().get("seconds", {})
        todo.sort(key=lambda rs: -budget.get(f"molecule {rs[0]}/{rs[1]}", 0))
        # make test leaves Molecule's idempotence and check steps to the lab, whose rerun and
        # site.yml --check take every role at once (.config/molecule/make-test.yml); make
        # test-role keeps them.
        reruns = args.level == "roles"
        jobs += [(f"molecule {role}/{scenario}", molecule, (role, scenario, tally, reruns)) for role, scenario in todo]
    if jobs:
        banner("roles (Molecule) and system (lab)" if len(jobs) > 1 else jobs[0][0])
        run_jobs(tally, jobs, args.jobs)
    summary(tally, time.monotonic() - started, args.jobs, whole=args.level == "all")
    return 1 if tally.failed or not tally.passed else 0


if __name__ == "__main__":
    sys.exit(main())
