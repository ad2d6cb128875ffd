"""System tests: the lab fleet after `site.yml`.

The first fixture converges site.yml twice on the lab (tests/run.py brings
up a fresh lab first); every check then looks at the hosts over SSH, as an
operator would, or from the controller across the lab network.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lab"))
import lab  # noqa: E402

REPORTS = ROOT / ".cache" / "reports"
SSH_CONFIG = ROOT / ".lab" / "ssh" / "config"
LAB_HOSTS = lab.lab_config()["hosts"]
_RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass
class PlaybookRun:
    rc: int
    output: str

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unreach), "failed": int(failed)}
                for host, ok, changed, unreach, failed in _RECAP.findall(self.output)}


def ansible_playbook(*args: str, log: str, env: dict | None = None) -> PlaybookRun:
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", **(env or {}))
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / log).write_text(proc.stdout)
    return PlaybookRun(proc.returncode, proc.stdout)


@pytest.fixture(scope="session")
def site_runs() -> list[PlaybookRun]:
    """site.yml on the lab, twice: the first converges, the second must change nothing."""
    first = ansible_playbook("site.yml", log="site-1.log")
    second = ansible_playbook("site.yml", log="site-2.log") if first.rc == 0 else first
    return [first, second]


@pytest.fixture(scope="session")
def converged(site_runs):
    if site_runs[0].rc != 0:
        pytest.fail("site.yml failed on the lab; see .cache/reports/site-1.log")
    return site_runs


@pytest.fixture(scope="session")
def hosts(converged):
    return {name: testinfra.get_host(f"ssh://{name}", ssh_config=str(SSH_CONFIG)) for name in LAB_HOSTS}


def pytest_generate_tests(metafunc):
    if "lab_host" in metafunc.fixturenames:
        metafunc.parametrize("lab_host", sorted(LAB_HOSTS), ids=lambda h: h.split(".")[0])
