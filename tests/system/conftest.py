"""System tests: the lab fleet after `site.yml`.

The first fixture converges site.yml on the lab (tests/run.py brings up a
fresh lab first), then runs it again the way AWX's worker does: through
ansible-runner, from a private data dir holding a fresh copy of the project,
with the secrets as extra vars and the controller's state outside the copy.
Every check then looks at the hosts over SSH, as an operator would, or from
the controller across the lab network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lab"))
import lab  # noqa: E402

REPORTS = ROOT / ".cache" / "reports"
SSH_CONFIG = ROOT / ".lab" / "ssh" / "config"
LAB_HOSTS = lab.lab_config()["hosts"]
# Each host's Debian codename, as the lab inventory names it (lab_release).
LAB_RELEASES = lab.lab_config()["releases"]
_RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass
class PlaybookRun:
    rc: int
    output: str
    # ansible-runner's job events (the events AWX stores) and private data dir, when run through it.
    events: list[dict] = field(default_factory=list)
    private_data_dir: Path | None = None

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


def project_copy(dest: Path) -> None:
    """The project as an SCM checkout gives it: tracked and new files plus .git, nothing ignored
    (no venv, no lab state, no CA, no build cache)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / ".git", dest / ".git", symlinks=True)


def ansible_runner(playbook: str, log: str, private_data_dir: Path) -> PlaybookRun:
    """`playbook` through ansible-runner, laid out as an AWX job's private data dir."""
    project = private_data_dir / "project"
    project_copy(project)
    lab_state = ROOT / ".lab"
    env_dir = private_data_dir / "env"
    env_dir.mkdir(parents=True)
    # What AWX's credentials and job template inject: secrets as extra vars,
    # the SSH key through ssh-agent, the state location as an environment setting.
    extravars = {
        "pki_builtin_root_passphrase": (lab_state / "ca-passphrase").read_text().strip(),
        "openbao_secrets_passphrase": (lab_state / "openbao-passphrase").read_text().strip(),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={lab_state / 'ssh' / 'known_hosts'} "
                                   "-o StrictHostKeyChecking=yes",
        "ansible_ssh_private_key_file": "",
    }
    for name, content in {
        "extravars": json.dumps(extravars),
        "envvars": json.dumps({"SEVENLEAGUE_STATE_DIR": str(ROOT / "inventories" / "lab"),
                               "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                               "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}),
        "ssh_key": (lab_state / "ssh" / "id_ed25519").read_text(),
        "settings": json.dumps({"suppress_ansible_output": True}),
    }.items():
        path = env_dir / name
        path.write_text(content)
        path.chmod(0o600)
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-runner"), "run", str(private_data_dir), "-p", playbook,
         "--ident", "job", "--inventory", str(project / "inventories" / "lab")],
        cwd=private_data_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800,
        env=dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"))
    artifacts = private_data_dir / "artifacts" / "job"
    stdout = (artifacts / "stdout").read_text(errors="replace") if (artifacts / "stdout").exists() else ""
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / log).write_text(proc.stdout + stdout)
    events = [json.loads(p.read_text()) for p in sorted((artifacts / "job_events").glob("*.json"),
                                                         key=lambda p: int(p.name.split("-", 1)[0]))]
    return PlaybookRun(proc.returncode, stdout, events, private_data_dir)


@pytest.fixture(scope="session")
def site_runs(tmp_path_factory) -> list[PlaybookRun]:
    """site.yml on the lab, twice: the first converges; the second, through
    ansible-runner as AWX runs it, must change nothing."""
    first = ansible_playbook("site.yml", log="site-1.log")
    second = (ansible_runner("site.yml", log="site-2-ansible-runner.log",
                             private_data_dir=tmp_path_factory.mktemp("awx-job"))
              if first.rc == 0 else first)
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
