"""Host certificates on the lab: every host holds a valid, short-lived
certificate from the fleet's CA, and rotation re-issues them all."""

import subprocess

import pytest
from conftest import LAB_HOSTS, ROOT, ansible_playbook

CURRENT = "/etc/sevenleague/pki/current"
CA_DIR = ROOT / "inventories" / "lab" / ".pki"


def serial(host):
    return host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -serial").split("=")[1]


def test_certificate_chains_to_the_fleet_ca(hosts, lab_host, tmp_path):
    host = hosts[lab_host]
    cert = tmp_path / "cert.pem"
    chain = tmp_path / "chain.pem"
    cert.write_text(host.file(f"{CURRENT}/cert.pem").content_string)
    chain.write_text(host.file(f"{CURRENT}/chain.pem").content_string)
    # Verified on the controller against the CA's own root, not the host's copy of it.
    result = subprocess.run(["openssl", "verify", "-CAfile", str(CA_DIR / "root.crt"), "-untrusted", str(chain),
                             str(cert)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_certificate_names_the_host_and_lives_a_day(hosts, lab_host):
    host = hosts[lab_host]
    text = host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -ext subjectAltName")
    assert f"DNS:{lab_host}" in text and f"IP Address:{LAB_HOSTS[lab_host]}" in text
    start = int(host.check_output(
        f"date -d \"$(openssl x509 -in {CURRENT}/cert.pem -noout -startdate | cut -d= -f2)\" +%s"))
    end = int(host.check_output(
        f"date -d \"$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)\" +%s"))
    assert end - start == 86400 + 300


def test_root_key_is_encrypted_at_rest():
    assert "ENCRYPTED" in (CA_DIR / "root.key").read_text()


@pytest.fixture(scope="module")
def rotation(hosts):
    before = {name: serial(host) for name, host in hosts.items()}
    run = ansible_playbook("playbooks/rotate-certs.yml", log="rotate-certs.log")
    after = {name: serial(host) for name, host in hosts.items()}
    return before, run, after


def test_rotate_certs_changes_every_serial(rotation):
    before, run, after = rotation
    assert run.rc == 0, run.output[-3000:]
    assert all(before[name] != after[name] for name in LAB_HOSTS), (before, after)


def test_site_right_after_a_rotation_changes_nothing(rotation):
    run = ansible_playbook("site.yml", log="site-after-rotation.log")
    assert run.rc == 0, run.output[-3000:]
    changed = {host: r["changed"] for host, r in run.recap.items() if r["changed"]}
    assert changed == {}


@pytest.fixture(scope="module")
def ca_rollover(rotation, hosts):
    """Phase 1 alone (as if interrupted there), again, then the rest of the rollover."""
    old_root = (CA_DIR / "root.crt").read_text()
    before = {name: serial(host) for name, host in hosts.items()}
    trust = ansible_playbook("playbooks/rotate-ca.yml", "-e", "rotate_ca_until=trust", log="rotate-ca-trust.log")
    next_root = (CA_DIR.parent / ".pki-next" / "root.crt").read_text() if trust.rc == 0 else ""
    bundles = {name: host.file(f"{CURRENT}/ca.pem").content_string for name, host in hosts.items()}
    trust_again = ansible_playbook("playbooks/rotate-ca.yml", "-e", "rotate_ca_until=trust",
                                   log="rotate-ca-trust-again.log")
    rest = ansible_playbook("playbooks/rotate-ca.yml", log="rotate-ca.log")
    return {"old_root": old_root, "next_root": next_root, "before": before, "trust": trust, "bundles": bundles,
            "trust_again": trust_again, "rest": rest}


def test_rotate_ca_first_makes_every_host_trust_both_roots(ca_rollover):
    assert ca_rollover["trust"].rc == 0, ca_rollover["trust"].output[-3000:]
    for name, bundle in ca_rollover["bundles"].items():
        assert ca_rollover["old_root"].strip() in bundle and ca_rollover["next_root"].strip() in bundle, name


def test_rotate_ca_phase_run_again_changes_nothing(ca_rollover):
    run = ca_rollover["trust_again"]
    assert run.rc == 0, run.output[-3000:]
    assert {host: r["changed"] for host, r in run.recap.items() if r["changed"]} == {}


def test_rotate_ca_moves_every_host_to_the_new_root(ca_rollover, hosts, tmp_path):
    run = ca_rollover["rest"]
    assert run.rc == 0, run.output[-3000:]
    new_root = (CA_DIR / "root.crt").read_text()
    # The rollover resumed with the CA its first phase created.
    assert new_root == ca_rollover["next_root"] != ca_rollover["old_root"]
    for name, host in hosts.items():
        assert serial(host) != ca_rollover["before"][name]
        # Retired: only the new root is trusted.
        assert host.file(f"{CURRENT}/ca.pem").content_string.strip() == new_root.strip(), name
        cert, chain = tmp_path / f"{name}.pem", tmp_path / f"{name}-chain.pem"
        cert.write_text(host.file(f"{CURRENT}/cert.pem").content_string)
        chain.write_text(host.file(f"{CURRENT}/chain.pem").content_string)
        result = subprocess.run(["openssl", "verify", "-CAfile", str(CA_DIR / "root.crt"), "-untrusted", str(chain),
                                 str(cert)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    retired = list((CA_DIR.parent / ".pki-retired").iterdir())
    assert any((folder / "root.crt").read_text() == ca_rollover["old_root"] for folder in retired)
    assert not (CA_DIR.parent / ".pki-next").exists() and not (CA_DIR.parent / ".pki-previous").exists()


def test_site_after_a_ca_rollover_changes_nothing(ca_rollover):
    run = ansible_playbook("site.yml", log="site-after-rotate-ca.log")
    assert run.rc == 0, run.output[-3000:]
    assert {host: r["changed"] for host, r in run.recap.items() if r["changed"]} == {}
