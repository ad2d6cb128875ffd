"""The fleet moved to the built-in CA by one variable, the built-in CA rolled
over (with a host down on the way), and the fleet moved back to OpenBao.

The backend is the identity layer's alone (nothing outside the pki and
openbao roles reads it; consumers follow /etc/sevenleague/pki/current through
their hooks), so the moves run that layer's playbooks: site.yml would add
only the other layers' no-op tasks, two minutes each on the lab.

Starts from the lab as site.yml converged it, on OpenBao, and leaves it on
OpenBao again, whatever fails on the way (on_builtin).
"""

import json

import pytest
from conftest import (
    CA_DIR,
    CURRENT,
    ROOT,
    SERVER_CA,
    ansible_playbook,
    certificate_names,
    hostile,
    serial,
    stopped,
    verify,
)

OPENBAO_ROOT = ROOT / "inventories" / "lab" / ".openbao" / "root.crt"
# The lab inventory reads the backend from the environment (as a site sets it in
# group_vars); while the fleet moves, hosts trust the root they leave as well.
BUILTIN = {"SEVENLEAGUE_PKI_BACKEND": "builtin"}
NEXT_DIR = CA_DIR.parent / ".pki-next"
PREVIOUS_DIR = CA_DIR.parent / ".pki-previous"
RETIRED_DIR = CA_DIR.parent / ".pki-retired"
APP1, APP2 = "app1.sevenleague.test", "app2.sevenleague.test"


def trust(path) -> str:
    return json.dumps({"pki_extra_trust_files": [str(path)]})


def unchanged(run) -> dict:
    return {host: r["changed"] for host, r in run.recap.items() if r["changed"]}


def to_openbao(log: str):
    # OpenBao's listener holds a certificate from the built-in CA (rolled over or not): trust its root.
    return ansible_playbook("playbooks/openbao.yml", "playbooks/pki.yml", "-e", trust(CA_DIR / "root.crt"), log=log)


@pytest.fixture(scope="module")
def on_builtin(hosts):
    """The fleet on the built-in CA for the file's tests; back on OpenBao at the end, by
    back_on_openbao's tested move or, if that did not run or failed, by the same move here."""
    moves = {"back": None}
    try:
        before = {name: serial(host) for name, host in hosts.items()}
        first = ansible_playbook("playbooks/pki.yml", "-e", trust(OPENBAO_ROOT), env=BUILTIN, log="pki-builtin-1.log")
        # The certificate layer again: nothing may flap between the backends' settings.
        second = (
            ansible_playbook("playbooks/pki.yml", "-e", trust(OPENBAO_ROOT), env=BUILTIN, log="pki-builtin-2.log")
            if first.rc == 0
            else first
        )
        yield before, first, second, moves
    finally:
        if moves["back"] is None or moves["back"].rc != 0:
            restored = to_openbao(log="pki-openbao-restored.log")
            assert restored.rc == 0, restored.output[-3000:]


def test_switching_to_the_builtin_ca_converges_and_a_pki_rerun_changes_nothing(on_builtin):
    _, first, second, _ = on_builtin
    assert first.rc == 0, first.output[-3000:]
    assert second.rc == 0, second.output[-3000:]
    assert unchanged(second) == {}


def test_every_host_holds_a_builtin_certificate_and_no_timer(on_builtin, hosts, lab_host, tmp_path):
    host = hosts[lab_host]
    assert serial(host) != on_builtin[0][lab_host]
    result = verify(host, tmp_path, str(CA_DIR / "root.crt"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Renewal is the controller's now: no timer asks OpenBao any more.
    assert not host.file("/etc/systemd/system/sevenleague-pki-renew-host.timer").exists
    bundle = host.file(f"{CURRENT}/ca.pem").content_string
    assert bundle.count("BEGIN CERTIFICATE") == 2 and OPENBAO_ROOT.read_text().strip() in bundle


def test_a_hostile_host_gets_no_certificate_for_another_hosts_names_from_the_builtin_ca(on_builtin, hosts):
    """The same lies as on OpenBao (test_pki.py): the controller's CA compares the CSR with app1's
    inventory names, refuses it, and app1 keeps its certificate."""
    host = hosts["app1.sevenleague.test"]
    before = serial(host)
    with hostile(host, "app1.sevenleague.test") as used:
        run = ansible_playbook(
            "playbooks/pki.yml",
            "--limit",
            "app1.sevenleague.test",
            "-e",
            json.dumps({"pki_force_renew": True, "pki_extra_trust_files": [str(OPENBAO_ROOT)]}),
            env=BUILTIN,
            log="pki-hostile-builtin.log",
        )
        assert used()
    assert run.rc != 0
    assert (
        "the CSR's SANs (10.213.7.22, app2.sevenleague.test) differ from sans (10.213.7.21, app1.sevenleague.test)"
    ) in run.output
    assert serial(host) == before
    assert certificate_names(host) == {"DNS:app1.sevenleague.test", "IP Address:10.213.7.21"}


@pytest.fixture(scope="module")
def ca_rollover(on_builtin, hosts):
    """A rollover asked for part of the fleet; one with app2 down; the rerun once app2 is back;
    and one more run after it finished."""
    old_root = (CA_DIR / "root.crt").read_text()
    before = {name: serial(host) for name, host in hosts.items()}
    limited = ansible_playbook("playbooks/rotate-ca.yml", "--limit", APP1, env=BUILTIN, log="rotate-ca-limit.log")
    limited_left_next = NEXT_DIR.exists()
    with stopped(APP2):
        down = ansible_playbook("playbooks/rotate-ca.yml", env=BUILTIN, log="rotate-ca-app2-down.log")
        after_down = {
            "root": (CA_DIR / "root.crt").read_text(),
            "switched": PREVIOUS_DIR.exists(),
            "next_root": (NEXT_DIR / "root.crt").read_text() if NEXT_DIR.exists() else "",
            "bundles": {
                name: host.file(f"{CURRENT}/ca.pem").content_string for name, host in hosts.items() if name != APP2
            },
        }
    rest = ansible_playbook("playbooks/rotate-ca.yml", env=BUILTIN, log="rotate-ca.log")
    retired = sorted(RETIRED_DIR.iterdir()) if RETIRED_DIR.exists() else []
    again = ansible_playbook("playbooks/rotate-ca.yml", env=BUILTIN, log="rotate-ca-again.log")
    return {
        "old_root": old_root,
        "before": before,
        "limited": limited,
        "limited_left_next": limited_left_next,
        "down": down,
        "after_down": after_down,
        "rest": rest,
        "retired": retired,
        "again": again,
    }


def test_rotate_ca_refuses_to_roll_over_part_of_the_fleet(ca_rollover):
    run = ca_rollover["limited"]
    assert run.rc != 0
    assert "cannot run with --limit app1.sevenleague.test" in run.output
    assert not ca_rollover["limited_left_next"]


def test_rotate_ca_with_a_host_down_stops_before_the_switch(ca_rollover):
    run, after = ca_rollover["down"], ca_rollover["after_down"]
    assert run.rc != 0
    assert f"Not switching to the next CA: {APP2} did not show the next root" in run.output
    # Nothing switched: the active CA is the old one, and the hosts that were up trust both roots.
    assert after["root"] == ca_rollover["old_root"] and not after["switched"]
    assert after["next_root"]
    for name, bundle in after["bundles"].items():
        assert ca_rollover["old_root"].strip() in bundle and after["next_root"].strip() in bundle, name


def test_rotate_ca_resumes_and_moves_every_host_to_the_new_root_once_the_host_is_back(ca_rollover, hosts, tmp_path):
    run = ca_rollover["rest"]
    assert run.rc == 0, run.output[-3000:]
    new_root = (CA_DIR / "root.crt").read_text()
    # The rollover resumed with the CA the interrupted run created.
    assert new_root == ca_rollover["after_down"]["next_root"] != ca_rollover["old_root"]
    for name, host in hosts.items():
        assert serial(host) != ca_rollover["before"][name]
        # Retired: only the new root is trusted.
        assert host.file(f"{CURRENT}/ca.pem").content_string.strip() == new_root.strip(), name
        result = verify(host, tmp_path, str(CA_DIR / "root.crt"))
        assert result.returncode == 0, result.stdout + result.stderr
    assert any((folder / "root.crt").read_text() == ca_rollover["old_root"] for folder in ca_rollover["retired"])
    assert not NEXT_DIR.exists() and not PREVIOUS_DIR.exists()


def test_rotate_ca_after_a_finished_rollover_changes_nothing(ca_rollover):
    run = ca_rollover["again"]
    assert run.rc == 0, run.output[-3000:]
    assert unchanged(run) == {}
    assert "nothing to do" in run.output
    assert not NEXT_DIR.exists()
    assert sorted(RETIRED_DIR.iterdir()) == ca_rollover["retired"]


@pytest.fixture(scope="module")
def back_on_openbao(on_builtin, ca_rollover, hosts):
    on_builtin[3]["back"] = run = to_openbao(log="pki-openbao-again.log")
    return run


def test_moving_back_to_openbao_gives_every_host_an_openbao_certificate_and_its_timer(back_on_openbao, hosts, tmp_path):
    assert back_on_openbao.rc == 0, back_on_openbao.output[-3000:]
    for name, host in hosts.items():
        result = verify(host, tmp_path, str(OPENBAO_ROOT))
        assert result.returncode == 0, (name, result.stdout + result.stderr)
        assert host.service("sevenleague-pki-renew-host.timer").is_running, name
    # The controller's bundle for OpenBao's listener follows the rolled-over built-in root.
    assert (CA_DIR / "root.crt").read_text().strip() in SERVER_CA.read_text()
