"""The host's certificate after converge: generated key stays on the host,
the certificate chains to the CA, and consumers find it through one path."""

import json
import os
from pathlib import Path

import pytest

# Commands go straight to the containers through podman, not through one
# `ansible` process per command (Molecule's default for testinfra), which made
# this step minutes long.
testinfra_hosts = ["podman://sl-molecule-pki"]

BASE = "/etc/sevenleague/pki"
CURRENT = f"{BASE}/current"


def test_current_points_at_a_release(host):
    current = host.file(CURRENT)
    assert current.is_symlink
    assert current.linked_to.startswith(f"{BASE}/releases/")
    release = host.file(current.linked_to)
    assert release.is_directory and release.mode == 0o750 and release.group == "ssl-cert"


def test_key_is_private_to_root_and_ssl_cert(host):
    key = host.file(f"{CURRENT}/key.pem")
    assert key.user == "root" and key.group == "ssl-cert" and key.mode == 0o640


def test_certificate_chains_to_the_ca_and_matches_the_key(host):
    verify = host.run(f"cd {CURRENT} && openssl verify -CAfile ca.pem -untrusted chain.pem cert.pem")
    assert verify.rc == 0, verify.stdout + verify.stderr
    cert_key = host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -pubkey")
    key_pub = host.check_output(f"openssl pkey -in {CURRENT}/key.pem -pubout")
    assert cert_key == key_pub


def test_certificate_names_and_lifetime(host):
    text = host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -ext subjectAltName -dates")
    assert "DNS:sl-molecule-pki" in text and "DNS:pki.molecule.test" in text
    start = host.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -startdate | cut -d= -f2)" +%s')
    end = host.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)" +%s')
    # 24 h, plus the 5 minutes of clock skew allowed before now.
    assert int(end) - int(start) == 86400 + 300


def test_key_is_ecdsa_p256(host):
    assert "prime256v1" in host.check_output(f"openssl pkey -in {CURRENT}/key.pem -noout -text")


def test_local_fact_tells_consumers_where_everything_is(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/pki.fact").content_string)
    assert fact["cert"] == f"{CURRENT}/cert.pem" and fact["key"] == f"{CURRENT}/key.pem"
    # Consumers' defaults read the base directory, and drop their reload hooks where the tool runs them.
    assert fact["base_dir"] == BASE and fact["hooks_dir"] == f"{BASE}/hooks.d"
    assert host.file(fact["hooks_dir"]).is_directory
    serial = host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -serial").split("=")[1]
    assert int(fact["serial"], 16) == int(serial, 16)


def test_expiry_metrics_for_node_exporter(host):
    metrics = host.file("/var/lib/prometheus/node-exporter/sevenleague_pki.prom").content_string
    end = host.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)" +%s')
    assert "# TYPE sevenleague_certificate_not_after_seconds gauge" in metrics
    assert any(
        line.startswith("sevenleague_certificate_not_after_seconds{") and line.endswith(f" {end}")
        for line in metrics.splitlines()
    )


def test_the_controller_never_holds_the_hosts_private_key(host):
    """Only the CSR travelled: the key's bytes are in no file Ansible left on the controller."""
    key_body = "".join(host.check_output(f"openssl pkey -in {CURRENT}/key.pem").splitlines()[1:-1])
    assert len(key_body) > 40
    places = [Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]), Path.home() / ".ansible"]
    for place in places:
        for path in place.rglob("*"):
            if path.is_file() and path.stat().st_size < 10_000_000:
                text = "".join(path.read_text(errors="ignore").split())
                assert key_body not in text, f"the host's private key is in {path}"
    ca_keys = sorted(
        p.name for p in (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory" / ".pki").glob("*.key")
    )
    assert ca_keys == ["intermediate.key", "root.key"]


@pytest.mark.parametrize("name", ["intermediate.key", "root.key"])
def test_ca_keys_on_the_controller_are_private(name):
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory" / ".pki" / name
    assert path.stat().st_mode & 0o777 == 0o600
