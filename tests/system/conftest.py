"""System tests: the lab fleet after `site.yml`.

The first fixture converges site.yml on the lab (tests/run.py brings up a
fresh lab first), then runs it again the way AWX's worker does: through
ansible-runner, from a private data dir holding a fresh copy of the project,
with the secrets as extra vars and the controller's state outside the copy.
Every check then looks at the hosts over SSH, as an operator would, or from
the controller across the lab network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra
import yaml

ROOT = Path(__file__).resolve().parents[2]
import lab

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
        return {
            host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unreach), "failed": int(failed)}
            for host, ok, changed, unreach, failed in _RECAP.findall(self.output)
        }


def _playbook_env(env: dict | None) -> dict:
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", **(env or {}))
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def layers_playbook(directory: Path, *layers: str) -> str:
    """A playbook importing some of site.yml's layers (playbooks/<layer>), as site.yml does.
    Given as several files instead, ansible-playbook would stop at the end of the first file in
    which any host failed or was unreachable, where site.yml goes on with the other hosts."""
    path = directory / f"layers-{'-'.join(Path(layer).stem for layer in layers)}.yml"
    path.write_text(
        "---\n"
        + "".join(
            f"- name: {layer}\n  ansible.builtin.import_playbook: {ROOT / 'playbooks' / layer}\n" for layer in layers
        )
    )
    return str(path)


def ansible_playbook(*args: str, log: str, env: dict | None = None) -> PlaybookRun:
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), *args],
        cwd=ROOT,
        env=_playbook_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / log).write_text(proc.stdout)
    return PlaybookRun(proc.returncode, proc.stdout)


class RunningPlaybook:
    """ansible-playbook started in the background, its output going to .cache/reports/`log`, so a
    test can act in the middle of a run (`wait_for` a line, then break something) and `finish` it."""

    def __init__(self, *args: str, log: str, env: dict | None = None):
        REPORTS.mkdir(parents=True, exist_ok=True)
        self.log = REPORTS / log
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "ansible-playbook"), *args],
                cwd=ROOT,
                env=_playbook_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, text: str, timeout: float = 900) -> bool:
        """True once `text` is in the output; False if the run ended or `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return True
            if self.proc.poll() is not None:
                return text in self.log.read_text(errors="replace")
            time.sleep(0.5)
        return False

    def finish(self) -> PlaybookRun:
        rc = self.proc.wait(timeout=1800)
        return PlaybookRun(rc, self.log.read_text(errors="replace"))


def project_copy(dest: Path) -> None:
    """The project as an SCM checkout gives it: tracked and new files plus .git, nothing ignored
    (no venv, no lab state, no CA, no build cache)."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
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
        "envvars": json.dumps(
            {
                "SEVENLEAGUE_STATE_DIR": str(ROOT / "inventories" / "lab"),
                "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_NOCOLOR": "1",
            }
        ),
        "ssh_key": (lab_state / "ssh" / "id_ed25519").read_text(),
        "settings": json.dumps({"suppress_ansible_output": True}),
    }.items():
        path = env_dir / name
        path.write_text(content)
        path.chmod(0o600)
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "ansible-runner"),
            "run",
            str(private_data_dir),
            "-p",
            playbook,
            "--ident",
            "job",
            "--inventory",
            str(project / "inventories" / "lab"),
        ],
        cwd=private_data_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
        env=dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"),
    )
    artifacts = private_data_dir / "artifacts" / "job"
    stdout = (artifacts / "stdout").read_text(errors="replace") if (artifacts / "stdout").exists() else ""
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / log).write_text(proc.stdout + stdout)
    events = [
        json.loads(p.read_text())
        for p in sorted((artifacts / "job_events").glob("*.json"), key=lambda p: int(p.name.split("-", 1)[0]))
    ]
    return PlaybookRun(proc.returncode, stdout, events, private_data_dir)


@pytest.fixture(scope="session")
def site_runs(tmp_path_factory) -> list[PlaybookRun]:
    """site.yml on the lab, twice: the first converges; the second, through
    ansible-runner as AWX runs it, must change nothing."""
    first = ansible_playbook("site.yml", log="site-1.log")
    second = (
        ansible_runner("site.yml", log="site-2-ansible-runner.log", private_data_dir=tmp_path_factory.mktemp("awx-job"))
        if first.rc == 0
        else first
    )
    return [first, second]


def wait_for(check, timeout: float, interval: float = 2.0, what: str = "condition"):
    """check() until it returns something truthy; its last value otherwise fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            break
        time.sleep(interval)
    assert value, f"{what}: not within {timeout:.0f} s"
    return value


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


# What a host whose root is an attacker's would claim: another host's address and names, its own
# choice of CA endpoint and networks. Keys a host's facts can carry; none may decide its certificate.
HOSTILE_FACTS = {
    "ansible_host": "10.213.7.22",
    "inventory_hostname": "app2.sevenleague.test",
    "pki_extra_sans": ["app2.sevenleague.test", "10.213.7.22", "*.sevenleague.test"],
    "pki_allowed_networks": ["0.0.0.0/0"],
    "pki_ttl": 31536000,
    "pki_openbao_url": "https://10.213.7.22:8200",
    "pki_openbao_mount": "pki",
    "pki_openbao_role": "renew-app2.sevenleague.test",
}

# The tool's `request`, as a hostile host answers it: a CSR for the key the tool just made, but
# naming app2 and its address, and a fake fact of who the host is.
HOSTILE_TOOL = """#!/bin/sh
if [ "$1" = request ]; then
    touch /run/sevenleague-hostile-request
    REAL "$@" > /dev/null || exit 1
    csr=$(openssl req -new -key /etc/sevenleague/pki/pending/key.pem -subj /CN=app2.sevenleague.test \
          -addext subjectAltName=DNS:app2.sevenleague.test,IP:10.213.7.22 | python3 -c \
          'import json, sys; print(json.dumps({"csr": sys.stdin.read()}))')
    printf '%s\n' "$csr"
    exit 0
fi
exec REAL "$@"
"""


@contextlib.contextmanager
def hostile(host, name: str):
    """`name` as a compromised host: its cached facts (what the controller read from it) claim
    HOSTILE_FACTS, and its certificate tool answers requests with a CSR for another host."""
    cache = next((ROOT / ".cache" / "facts").glob(f"*_{name}"))
    original = cache.read_text()
    document = json.loads(original)
    facts = json.loads(document["__payload__"])
    facts.update(HOSTILE_FACTS)
    facts.setdefault("ansible_local", {})["pki"] = {"sans": HOSTILE_FACTS["pki_extra_sans"]}
    cache.write_text(json.dumps({**document, "__payload__": json.dumps(facts)}))
    real = host.check_output("command -v sevenleague-pki")
    assert real != "/usr/local/bin/sevenleague-pki", "a hostile tool is left over from an earlier run"
    tool = HOSTILE_TOOL.replace("REAL", real)
    installed = host.run(
        f"printf '%s' {shlex.quote(tool)} > /usr/local/bin/sevenleague-pki && chmod 0755 /usr/local/bin/sevenleague-pki"
    )
    assert installed.rc == 0, installed.stderr
    host.run("rm -f /run/sevenleague-hostile-request")

    def used() -> bool:
        """Both lies reached the run: the cached facts were not gathered afresh, the tool answered."""
        return "pki_openbao_url" in cache.read_text() and host.file("/run/sevenleague-hostile-request").exists

    try:
        yield used
    finally:
        cache.write_text(original)
        host.run("rm -f /usr/local/bin/sevenleague-pki /run/sevenleague-hostile-request")


# --- the fleet's certificates, as several files read them ---------------------------------------

CURRENT = "/etc/sevenleague/pki/current"
CONFIG = "/etc/sevenleague/certificates/host.json"
LISTENER_CONFIG = "/etc/sevenleague/certificates/openbao.json"
CA_DIR = ROOT / "inventories" / "lab" / ".pki"
SERVER_CA = ROOT / "inventories" / "lab" / ".openbao" / "server-ca.pem"
OPENBAO = "https://10.213.7.11:8200"
CA_HOST = "ca1.sevenleague.test"


def serial(host, config=CONFIG):
    return json.loads(host.check_output(f"sevenleague-pki status --config {config}"))["serial"]


def verify(host, tmp_path, root: str, directory: str = CURRENT) -> subprocess.CompletedProcess:
    """The host's certificate verified on the controller against `root`, not the host's own bundle."""
    cert, chain = tmp_path / "cert.pem", tmp_path / "chain.pem"
    cert.write_text(host.file(f"{directory}/cert.pem").content_string)
    chain.write_text(host.file(f"{directory}/chain.pem").content_string)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", root, "-untrusted", str(chain), str(cert)], capture_output=True, text=True
    )


def ansible_token() -> str:
    """Ansible's OpenBao token, from the openbao role's encrypted file (as an operator reads it)."""
    secrets = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "ansible-vault"),
            "view",
            "--vault-password-file",
            str(ROOT / ".lab" / "openbao-passphrase"),
            str(ROOT / "inventories" / "lab" / ".openbao" / "ansible-token.vault"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return yaml.safe_load(secrets)["token"]


def renewal_roles() -> list[str]:
    """The renewal roles OpenBao holds, one per host the inventory names."""
    listing = subprocess.run(
        [
            "curl",
            "-sSf",
            "--cacert",
            str(SERVER_CA),
            "-H",
            f"X-Vault-Token: {ansible_token()}",
            f"{OPENBAO}/v1/pki_int/roles?list=true",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(listing.stdout)["data"]["keys"]


def certificate_names(host, directory: str = "/etc/sevenleague/pki/current") -> set[str]:
    """The SANs of the host's current certificate, as openssl prints them."""
    text = host.check_output(f"openssl x509 -in {directory}/cert.pem -noout -ext subjectAltName")
    return {name.strip() for name in text.splitlines()[-1].split(",")}


def assert_only_its_own_certificate(run: PlaybookRun, host, before: str, serial_now: str) -> None:
    """After a forced renewal on a hostile app1: a new certificate, for app1's names alone, a day long."""
    assert run.rc == 0, run.output[-3000:]
    assert serial_now != before
    assert certificate_names(host) == {"DNS:app1.sevenleague.test", "IP Address:10.213.7.21"}
    days = host.check_output("openssl x509 -in /etc/sevenleague/pki/current/cert.pem -noout -startdate -enddate")
    start, end = (line.split("=", 1)[1] for line in days.splitlines())
    lifetime = int(host.check_output(f"echo $(( $(date -d '{end}' +%s) - $(date -d '{start}' +%s) ))"))
    assert lifetime <= 86400 + 600, lifetime


def _close_ssh_master(name: str) -> None:
    subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-O", "exit", name], capture_output=True)


@contextlib.contextmanager
def stopped(name: str):
    """The lab host `name` powered off for the block, as a host that is down; booted again after,
    and back once it accepts SSH."""
    _close_ssh_master(name)
    lab.podman("stop", "-t", "10", lab.container_name(name))
    try:
        yield
    finally:
        lab.podman("start", lab.container_name(name))
        # Read now: a test may have added the host to the inventory after the session started.
        lab.wait_for_ssh(name, lab.lab_config()["hosts"][name])
        _close_ssh_master(name)


# SSH refused on a lab host (a table of the test's own, ahead of the role's): down as the
# controller sees it, while its services go on.
REFUSE_SSH = (
    "nft add table inet sl_unreachable && nft add chain inet sl_unreachable input "
    "'{ type filter hook input priority -10 ; }' && "
    "nft add rule inet sl_unreachable input tcp dport 22 reject with tcp reset"
)


@contextlib.contextmanager
def unreachable(name: str):
    """The lab host `name` out of the controller's reach for the block, its services still running
    (cheaper than `stopped`: nothing to boot or wait for afterwards)."""
    container = lab.container_name(name)
    lab.podman("exec", container, "sh", "-c", REFUSE_SSH)
    _close_ssh_master(name)
    try:
        yield
    finally:
        lab.podman("exec", container, "nft", "delete", "table", "inet", "sl_unreachable", check=False)
        _close_ssh_master(name)


LOAD_TOOL = ROOT / "bench" / "load.py"


@contextlib.contextmanager
def steady_load(host, url: str, rate: float):
    """bench/load.py on `host`, sending GET `url` `rate` times a second for the block; the dict
    yielded holds its report (sent, ok, failed, errors, rate, latency_ms) once the block ends."""
    host.check_output("rm -f /run/sl-load.py /run/sl-load.json /run/sl-load.stop")
    host.check_output(f"printf '%s' {shlex.quote(LOAD_TOOL.read_text())} > /run/sl-load.py")
    host.check_output(
        "systemd-run --unit sl-load --collect -p StandardOutput=file:/run/sl-load.json "
        f"python3 /run/sl-load.py {shlex.quote(url)} --rate {rate} --duration 900 "
        "--until-file /run/sl-load.stop"
    )
    report: dict = {}
    try:
        yield report
    finally:
        host.check_output("touch /run/sl-load.stop")
        for _ in range(60):
            if host.run("systemctl is-active --quiet sl-load").rc != 0:
                break
            time.sleep(0.5)
        report.update(json.loads(host.check_output("cat /run/sl-load.json")))
        host.run("rm -f /run/sl-load.py /run/sl-load.json /run/sl-load.stop")
