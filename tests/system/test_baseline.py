"""The baseline layer on every lab host, as a user relies on it."""

import base64
import json
import socket
import subprocess

import pytest
from conftest import LAB_HOSTS, LAB_RELEASES, ROOT, ansible_playbook

REPO_ADDRESS = next(LAB_HOSTS[h] for h in LAB_HOSTS if h.startswith("repo"))


def reachable(address, port, timeout=2.0):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_site_converges_every_host(site_runs):
    first = site_runs[0]
    assert first.rc == 0, first.output[-3000:]
    # Every lab host, and the controller, which builds the packages.
    assert sorted(first.recap) == sorted([*LAB_HOSTS, "localhost"])
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in first.recap.values())


def test_second_site_run_changes_nothing(converged):
    # The second run is the one through ansible-runner (test_awx.py), from a
    # fresh copy of the project: no fact cache, no build cache on the controller.
    # It is make test's proof of every role's idempotence (the scenarios' own
    # idempotence step runs in make test-role).
    second = converged[1]
    assert second.rc == 0, second.output[-3000:]
    changed = {host: r["changed"] for host, r in second.recap.items() if r["changed"]}
    assert sorted(second.recap) == sorted([*LAB_HOSTS, "localhost"])
    assert changed == {}, f"second run changed: {changed}; see .cache/reports/site-2-ansible-runner.log"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '{"common_sshd_allowed_sources": "10.0.0.0/8"}',
            "common_sshd_allowed_sources must be a list, but is the string '10.0.0.0/8'",
        ),
        # A variable of a role that runs late: still caught before the first change.
        ('{"apt_client_components": "main"}', "apt_client_components must be a list, but is the string 'main'"),
    ],
)
def test_wrong_variable_type_fails_before_any_host_changes(converged, extra, message):
    """A string where a list belongs stops the run in the preflight play, naming the variable."""
    run = ansible_playbook("site.yml", "-e", extra, log="site-bad-type.log")
    assert run.rc != 0
    assert message in run.output
    assert set(LAB_HOSTS) <= set(run.recap)
    # Nothing changed on any host: the run stopped in the preflight's checks, on every host.
    assert all(r["failed"] == 1 and r["changed"] == 0 for r in run.recap.values()), run.recap
    assert "PLAY [Baseline for every host]" not in run.output


REPO = "repo1.sevenleague.test"
REPO_FACT = "/etc/ansible/facts.d/apt_repo.fact"


def stranger_key(host) -> str:
    """A key made on `host`, as root there would make one."""
    made = host.run(
        "export GNUPGHOME=$(mktemp -d) && gpg --batch --passphrase '' --quick-generate-key "
        "stranger ed25519 sign 0 2>/dev/null && gpg --armor --export stranger && rm -rf $GNUPGHOME"
    )
    assert made.rc == 0, made.stderr
    return made.stdout


def test_a_repository_host_s_word_moves_no_host_to_another_key(hosts):
    """The controller's record, written by apt_repo from the controller's own signing key, is where
    hosts take the repository's key from. repo1 reporting another key (its fact forged by root there)
    changes nothing on any host; a record whose key is not the fingerprint it names stops the run
    before any change."""
    record_file = ROOT / "inventories" / "lab" / ".apt" / "sevenleague.json"
    record_text = record_file.read_text()
    record = json.loads(record_text)
    signing = subprocess.run(
        ["gpg", "--homedir", str(ROOT / "inventories" / "lab" / ".apt" / "signing"), "--with-colons", "--list-keys"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"fpr:::::::::{record['fingerprint']}:" in signing, "the record names another key than the controller's"
    assert record["url"] == f"http://{REPO_ADDRESS}/"
    app1, repo = hosts["app1.sevenleague.test"], hosts[REPO]
    keyring_before = app1.file("/etc/apt/keyrings/sevenleague.asc").content_string
    original = repo.check_output(f"base64 -w0 {REPO_FACT}")
    stranger = stranger_key(repo)
    fact = json.loads(base64.b64decode(original))
    fact.update(public_key=stranger, fingerprint="0" * 40, url="http://192.0.2.1/")
    forged = base64.b64encode(json.dumps(fact).encode()).decode()
    # Facts gathered in this run, not the controller's cache: what repo1 says now.
    fresh = {"ANSIBLE_GATHERING": "implicit"}
    limit = ["--limit", f"app1.sevenleague.test,{REPO}", "--tags", "apt_client"]
    try:
        repo.check_output(f"echo {forged} | base64 -d > {REPO_FACT}")
        ignored = ansible_playbook("playbooks/baseline.yml", *limit, log="baseline-forged-repo-fact.log", env=fresh)
        record_file.write_text(json.dumps({**record, "key": stranger}))
        stopped = ansible_playbook("playbooks/baseline.yml", *limit, log="baseline-new-repo-key.log", env=fresh)
    finally:
        record_file.write_text(record_text)
        repo.check_output(f"echo {original} | base64 -d > {REPO_FACT}")
        # The controller's fact cache holds repo1's forged word now: gather it again.
        ansible_playbook(
            "playbooks/baseline.yml",
            "--limit",
            REPO,
            "--tags",
            "apt_client",
            log="baseline-repo-key-back.log",
            env=fresh,
        )
    assert ignored.rc == 0, ignored.output[-3000:]
    assert ignored.recap["app1.sevenleague.test"]["changed"] == 0
    assert stopped.rc != 0
    assert "The internal repository's key is" in stopped.output and record["fingerprint"] in stopped.output
    assert stopped.recap["app1.sevenleague.test"]["changed"] == 0
    assert app1.file("/etc/apt/keyrings/sevenleague.asc").content_string == keyring_before


def test_no_unit_failed(hosts, lab_host):
    failed = hosts[lab_host].check_output("systemctl list-units --failed --plain --no-legend")
    assert failed == ""


def test_services_of_the_baseline_run(hosts, lab_host):
    host = hosts[lab_host]
    for service in ("ssh", "chrony", "nftables", "systemd-journald"):
        assert host.service(service).is_running, service
        assert host.service(service).is_enabled or service == "systemd-journald", service
    assert host.run("chronyc -n tracking").rc == 0


def test_firewall_drops_what_no_rule_opens(hosts, lab_host):
    """A real listener on a port without a rule: the host reaches it, the controller does not."""
    host = hosts[lab_host]
    address = LAB_HOSTS[lab_host]
    host.run("systemctl stop sl-probe.service")
    started = host.run(
        "systemd-run --unit sl-probe --property=Type=exec /usr/bin/python3 -m http.server --bind 0.0.0.0 8089"
    )
    assert started.rc == 0, started.stderr
    try:
        assert (
            host.run(
                "for i in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:8089/ && exit 0; "
                "sleep 0.1; done; exit 1"
            ).rc
            == 0
        )
        assert not reachable(address, 8089)
        assert reachable(address, 22)
    finally:
        host.run("systemctl stop sl-probe.service")


def test_sshd_refuses_passwords(lab_host):
    address = LAB_HOSTS[lab_host]
    result = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            f"root@{address}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr


def test_journal_is_persistent(hosts, lab_host):
    host = hosts[lab_host]
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert host.file(f"/var/log/journal/{machine_id}").is_directory


def test_host_runs_the_debian_release_the_inventory_names(hosts, lab_host):
    assert hosts[lab_host].system_info.codename == LAB_RELEASES[lab_host]


def test_the_lab_mixes_both_releases_in_every_group_of_two():
    inventory = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-inventory"), "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    groups = json.loads(inventory.stdout)
    for name, group in groups.items():
        members = group.get("hosts", []) if isinstance(group, dict) else []
        if len(members) >= 2:
            assert {LAB_RELEASES[h] for h in members} == {"bookworm", "trixie"}, name


@pytest.mark.parametrize("pocket", ["updates", "security"])
def test_apt_follows_updates_and_security_of_the_hosts_release(hosts, lab_host, pocket):
    assert f"{LAB_RELEASES[lab_host]}-{pocket}" in hosts[lab_host].check_output("apt-cache policy")


def test_every_host_trusts_the_internal_repository_by_its_own_key(hosts, lab_host):
    host = hosts[lab_host]
    source = host.file("/etc/apt/sources.list.d/sevenleague.sources").content_string
    assert "Signed-By: /etc/apt/keyrings/sevenleague.asc" in source
    assert f"http://{REPO_ADDRESS}/" in source


@pytest.mark.parametrize("app_host", ["app1.sevenleague.test", "app2.sevenleague.test"], ids=["app1", "app2"])
def test_app_host_installs_greeter_from_the_internal_repository(hosts, app_host):
    """A pinned version, with the repository's signature checked, then its health endpoint:
    the same package from the same suite on Debian 13 (app1) and Debian 12 (app2)."""
    host = hosts[app_host]
    version = sorted((ROOT / "build" / "debs").glob("greeter_*.deb"))[-1].name.split("_")[1]
    # The host's own apt timers may hold the lock for a while: wait for it rather than fail.
    install = host.run(
        "apt-get -o DPkg::Lock::Timeout=300 update -q && DEBIAN_FRONTEND=noninteractive "
        f"apt-get -o DPkg::Lock::Timeout=300 install -y -q greeter={version}"
    )
    assert install.rc == 0, install.stdout + install.stderr
    assert "WARNING: The following packages cannot be authenticated" not in install.stdout
    assert host.package("greeter").version == version
    policy = host.check_output("apt-cache policy greeter")
    assert f"http://{REPO_ADDRESS} sevenleague/main" in policy
    health = host.run(
        "for i in $(seq 50); do curl -fsS http://127.0.0.1:8081/healthz && exit 0; sleep 0.2; done; exit 1"
    )
    assert health.rc == 0 and '"ok"' in health.stdout
