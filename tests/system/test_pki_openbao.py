"""The fleet moved to the OpenBao backend by one variable, then renewing on its own.

Runs after test_pki.py (file order): the lab starts on the built-in CA.
"""

import json
import subprocess
import time

import pytest
from conftest import LAB_HOSTS, ROOT, ansible_playbook

CURRENT = "/etc/sevenleague/pki/current"
CONFIG = "/etc/sevenleague/certificates/host.json"
HOOK = "/etc/sevenleague/pki/hooks.d/90-system-test"
HOOK_LOG = "/run/sevenleague-system-test-hook"
# Short enough to watch the timers renew: due 2/3 into its life (~100 s), checked every 30 s.
SHORT_TTL = 150
BUILTIN_ROOT = ROOT / "inventories" / "lab" / ".pki" / "root.crt"
OPENBAO = "https://10.213.7.11:8200"
# The lab inventory reads the backend from the environment (as a site sets it
# in group_vars); both roots are trusted while the fleet moves.
BACKEND = {"SEVENLEAGUE_PKI_BACKEND": "openbao"}
TRUST = json.dumps({"pki_extra_trust_files": [str(BUILTIN_ROOT)]})


@pytest.fixture(scope="module")
def switched(hosts):
    first = ansible_playbook("site.yml", "-e", TRUST, env=BACKEND, log="site-openbao-1.log")
    second = (ansible_playbook("site.yml", "-e", TRUST, env=BACKEND, log="site-openbao-2.log")
              if first.rc == 0 else first)
    return first, second


@pytest.fixture(scope="module")
def openbao_root(tmp_path_factory):
    path = tmp_path_factory.mktemp("openbao") / "root.pem"
    subprocess.run(["curl", "-sSf", "--cacert", str(BUILTIN_ROOT), "-o", str(path), f"{OPENBAO}/v1/pki/ca/pem"],
                   check=True)
    return path


def test_switching_the_backend_converges(switched):
    first, _ = switched
    assert first.rc == 0, first.output[-3000:]


def test_a_second_run_on_openbao_changes_nothing(switched):
    _, second = switched
    assert second.rc == 0, second.output[-3000:]
    assert {host: r["changed"] for host, r in second.recap.items() if r["changed"]} == {}


def test_every_host_holds_an_openbao_certificate(switched, hosts, lab_host, openbao_root, tmp_path):
    host = hosts[lab_host]
    cert, chain = tmp_path / "cert.pem", tmp_path / "chain.pem"
    cert.write_text(host.file(f"{CURRENT}/cert.pem").content_string)
    chain.write_text(host.file(f"{CURRENT}/chain.pem").content_string)
    # Verified against OpenBao's root as its API serves it, not the host's copy.
    result = subprocess.run(["openssl", "verify", "-CAfile", str(openbao_root), "-untrusted", str(chain), str(cert)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -ext subjectAltName")
    assert f"DNS:{lab_host}" in text and f"IP Address:{LAB_HOSTS[lab_host]}" in text


def test_every_host_trusts_both_roots_while_moving(switched, hosts, lab_host):
    bundle = hosts[lab_host].file(f"{CURRENT}/ca.pem").content_string
    assert bundle.count("BEGIN CERTIFICATE") == 2
    assert BUILTIN_ROOT.read_text().strip() in bundle


def test_every_host_renews_on_its_own(switched, hosts, lab_host):
    host = hosts[lab_host]
    timer = host.service("sevenleague-pki-renew-host.timer")
    assert timer.is_enabled and timer.is_running
    check = json.loads(host.check_output(f"sevenleague-pki renew --check --config {CONFIG}"))
    assert check["renew"] is False, check


def serials(hosts) -> dict[str, str]:
    return {name: json.loads(host.check_output(f"sevenleague-pki status --config {CONFIG}"))["serial"]
            for name, host in hosts.items()}


@pytest.fixture(scope="module")
def left_alone(switched, hosts):
    """Short certificates issued by one converge, then nothing from the controller: the timers
    must renew every host, and the reload hooks run. Afterwards the fleet is back on a day."""
    for host in hosts.values():
        host.check_output(f"printf '#!/bin/sh\\necho \"$SEVENLEAGUE_PKI_NAME $SEVENLEAGUE_PKI_SERIAL\" >> {HOOK_LOG}\\n'"
                          f" > {HOOK} && chmod 755 {HOOK} && rm -f {HOOK_LOG}")
    short = ansible_playbook("playbooks/pki.yml", "-e", TRUST, "-e", f"pki_ttl={SHORT_TTL}", "-e", "pki_force_renew=true",
                             env=BACKEND, log="pki-short-ttl.log")
    assert short.rc == 0, short.output[-3000:]
    issued = serials(hosts)
    started = time.monotonic()
    renewed = {}
    while time.monotonic() - started < 4 * SHORT_TTL and len(renewed) < len(hosts):
        time.sleep(10)
        renewed = {name: serial for name, serial in serials(hosts).items() if serial != issued[name]}
    waited = time.monotonic() - started
    logs = {name: host.file(HOOK_LOG).content_string if host.file(HOOK_LOG).exists else ""
            for name, host in hosts.items()}
    yield issued, renewed, logs, waited
    for host in hosts.values():
        host.check_output(f"rm -f {HOOK} {HOOK_LOG}")
    back = ansible_playbook("playbooks/pki.yml", "-e", TRUST, "-e", "pki_force_renew=true", env=BACKEND,
                            log="pki-back-to-a-day.log")
    assert back.rc == 0, back.output[-3000:]


def test_every_timer_renews_its_host_while_the_controller_does_nothing(left_alone, hosts):
    issued, renewed, logs, waited = left_alone
    assert sorted(renewed) == sorted(hosts), f"not renewed within {waited:.0f} s: {sorted(set(hosts) - set(renewed))}"
    for name, host in hosts.items():
        # The converge's install ran the hook once, then the timer's; each names its serial.
        assert f"host {issued[name]}" in logs[name] and f"host {renewed[name]}" in logs[name], (name, logs[name])
        journal = host.check_output("journalctl -t sevenleague-pki --no-pager -o cat --since=-10min")
        assert f"certificate {renewed[name]}" in journal, journal[-2000:]
        verify = host.run(f"cd {CURRENT} && openssl verify -CAfile ca.pem -untrusted chain.pem cert.pem")
        assert verify.rc == 0, verify.stdout + verify.stderr
