"""Host certificates on the lab: OpenBao issues every host's (the lab's default),
the hosts renew on their own, and rotation re-issues them all.

The moves to the built-in CA and back are test_pki_builtin.py's; OpenBao's
intermediate rollover is test_pki_openbao_rollover.py's.
"""

import json
import re
import subprocess
import time

import pytest
from conftest import (
    CA_DIR,
    CA_HOST,
    CONFIG,
    CURRENT,
    LAB_HOSTS,
    LISTENER_CONFIG,
    OPENBAO,
    REPORTS,
    SERVER_CA,
    ansible_playbook,
    assert_only_its_own_certificate,
    certificate_names,
    hostile,
    serial,
    steady_load,
    verify,
)

# Short enough to watch the timers renew: due two thirds into its life (180 s). The timers check
# every 10 s and retry every few seconds, so a renewal follows OpenBao's return within the short
# life (a day's certificates check every 2 h and back off up to 5 min).
SHORT_TTL = 270
FORCE = {"pki_force_renew": True}
SHORT = {
    **FORCE,
    "pki_ttl": SHORT_TTL,
    "pki_agent_interval": 10,
    "pki_agent_jitter": 2,
    "pki_agent_attempts": 40,
    "pki_agent_backoff_max": 8,
}
TEST_HOOK = "90-system-test"
HOOK_LOG = "/run/sevenleague-system-test-hook"


@pytest.fixture(scope="module")
def openbao_root(tmp_path_factory):
    """OpenBao's root as its API serves it."""
    path = tmp_path_factory.mktemp("openbao") / "root.pem"
    subprocess.run(
        ["curl", "-sSf", "--cacert", str(SERVER_CA), "-o", str(path), f"{OPENBAO}/v1/pki/ca/pem"], check=True
    )
    return str(path)


def test_certificate_chains_to_openbaos_root(hosts, lab_host, openbao_root, tmp_path):
    result = verify(hosts[lab_host], tmp_path, openbao_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_certificate_names_the_host_and_lives_a_day(hosts, lab_host):
    host = hosts[lab_host]
    text = host.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -ext subjectAltName")
    assert f"DNS:{lab_host}" in text and f"IP Address:{LAB_HOSTS[lab_host]}" in text
    start = int(
        host.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -startdate | cut -d= -f2)" +%s')
    )
    end = int(host.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)" +%s'))
    assert 86400 <= end - start <= 86400 + 300


def test_every_host_renews_on_its_own(hosts, lab_host):
    host = hosts[lab_host]
    timer = host.service("sevenleague-pki-renew-host.timer")
    assert timer.is_enabled and timer.is_running
    check = json.loads(host.check_output(f"sevenleague-pki renew --check --config {CONFIG}"))
    assert check["renew"] is False, check


def test_openbaos_listener_comes_from_openbao_and_renews_on_its_own(hosts, openbao_root, tmp_path):
    ca = hosts[CA_HOST]
    result = verify(ca, tmp_path, openbao_root, "/etc/openbao/tls/current")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ca.service("sevenleague-pki-renew-openbao.timer").is_running
    served = subprocess.run(
        f"openssl s_client -connect 10.213.7.11:8200 -CAfile {openbao_root} -verify_return_error"
        f" </dev/null 2>/dev/null | openssl x509 -noout -serial",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert served.stdout.strip().split("=")[1].lower() == serial(ca, LISTENER_CONFIG)


def test_the_builtin_root_key_is_encrypted_at_rest():
    # The built-in CA still bootstraps OpenBao's listener.
    assert "ENCRYPTED" in (CA_DIR / "root.key").read_text()


def test_a_refused_issuance_leaves_the_host_as_it_was(hosts):
    # OpenBao refuses to sign (no such role): the play fails naming the reason, the key made for
    # the request is gone, and the host keeps its certificate.
    host = hosts["app1.sevenleague.test"]
    before, target = serial(host), host.file(CURRENT).linked_to
    run = ansible_playbook(
        "playbooks/pki.yml",
        "--limit",
        "app1.sevenleague.test",
        "-e",
        json.dumps({**FORCE, "pki_openbao_role": "no-such-role"}),
        log="pki-refused.log",
    )
    assert run.rc != 0
    assert "No new certificate for app1.sevenleague.test (host), the current one stays in place" in run.output
    assert "no-such-role" in run.output
    assert serial(host) == before and host.file(CURRENT).linked_to == target
    assert not host.file("/etc/sevenleague/pki/pending").exists


def test_a_hostile_host_gets_no_certificate_for_another_hosts_names(hosts):
    """app1's facts claim app2's address, names, a year's TTL and another OpenBao; its tool hands in
    a CSR for app2. The controller asks the real OpenBao for app1's inventory names, sees the CSR
    name another host and refuses it: app1 keeps its own certificate, nothing for app2 exists."""
    host = hosts["app1.sevenleague.test"]
    before = serial(host)
    with hostile(host, "app1.sevenleague.test") as used:
        run = ansible_playbook(
            "playbooks/pki.yml",
            "--limit",
            "app1.sevenleague.test",
            "-e",
            json.dumps(FORCE),
            log="pki-hostile-openbao.log",
        )
        assert used()
    assert run.rc != 0
    assert "the CSR's CN 'app2.sevenleague.test' differs from common_name 'app1.sevenleague.test'" in run.output
    assert "10.213.7.22:8200" not in run.output
    assert serial(host) == before
    assert certificate_names(host) == {"DNS:app1.sevenleague.test", "IP Address:10.213.7.21"}
    # The honest tool again: a renewal works as before.
    again = ansible_playbook(
        "playbooks/pki.yml", "--limit", "app1.sevenleague.test", "-e", json.dumps(FORCE), log="pki-after-hostile.log"
    )
    assert_only_its_own_certificate(again, host, before, serial(host))


# frontend on app1, through its Envoy and greeter's on app2 (the mesh), during the rotation.
MESH_URL = "http://127.0.0.1:8080/?name=rotation"
MESH_RATE = 220


@pytest.fixture(scope="module")
def rotation(hosts):
    before = {name: serial(host) for name, host in hosts.items()}
    with steady_load(hosts["app1.sevenleague.test"], MESH_URL, MESH_RATE) as load:
        time.sleep(2)
        run = ansible_playbook("playbooks/rotate-certs.yml", log="rotate-certs.log")
        time.sleep(2)
    (REPORTS / "rotate-certs-load.json").write_text(json.dumps(load, indent=1))
    after = {name: serial(host) for name, host in hosts.items()}
    return before, run, after, load


def test_rotate_certs_changes_every_serial(rotation):
    before, run, after, _ = rotation
    assert run.rc == 0, run.output[-3000:]
    assert all(before[name] != after[name] for name in LAB_HOSTS), (before, after)


def test_requests_through_the_mesh_all_succeed_while_every_certificate_rotates(rotation, hosts):
    """At least 200 requests a second from app1's frontend to greeter on app2 through both Envoys,
    while every host (both app hosts too) gets a new key and certificate: none fails, and each
    Envoy then serves its host's new certificate."""
    load = rotation[3]
    assert load["failed"] == 0, load
    assert load["rate"] >= 200 and load["ok"] >= 200 * 20, load
    for name in ("app1.sevenleague.test", "app2.sevenleague.test"):
        host = hosts[name]
        served = json.loads(host.check_output("curl -sf --unix-socket /run/envoy/admin.sock http://localhost/certs"))
        chain = [c["serial_number"] for cert in served["certificates"] for c in cert.get("cert_chain", [])]
        assert chain and chain[0].lower().lstrip("0") == serial(host).lower().lstrip("0"), (name, chain)


def test_check_mode_right_after_a_rotation_is_clean(rotation):
    """site.yml in check mode on the fleet a rotation left: every role runs clean in check mode on a
    converged fleet (make test's proof of check mode, in place of a check step per Molecule
    scenario), and the rotation left nothing for any layer to change. (That a real rerun of
    site.yml changes nothing is the AWX-style rerun's proof, test_baseline.py, which stands in for
    the scenarios' idempotence step the same way.)"""
    run = ansible_playbook("site.yml", "--check", log="site-check-after-rotation.log")
    assert run.rc == 0, run.output[-3000:]
    assert sorted(run.recap) == sorted([*LAB_HOSTS, "localhost"])
    changed = {host: r["changed"] for host, r in run.recap.items() if r["changed"]}
    assert changed == {}


# --- left alone, and OpenBao away: the timers renew every certificate ----------------------------


def certificates(hosts) -> dict[tuple[str, str], str]:
    """(host, certificate name) -> serial, OpenBao's listener included."""
    found = {(name, "host"): serial(host) for name, host in hosts.items()}
    found[(CA_HOST, "openbao")] = serial(hosts[CA_HOST], LISTENER_CONFIG)
    return found


def expiries(hosts) -> dict[tuple[str, str], int]:
    """(host, certificate name) -> the certificate's end, in seconds since the epoch."""

    def end(host, directory):
        return int(
            host.check_output(f'date -d "$(openssl x509 -in {directory}/cert.pem -noout -enddate | cut -d= -f2)" +%s')
        )

    found = {(name, "host"): end(host, CURRENT) for name, host in hosts.items()}
    found[(CA_HOST, "openbao")] = end(hosts[CA_HOST], "/etc/openbao/tls/current")
    return found


def hook_dirs(name):
    return ["/etc/sevenleague/pki/hooks.d"] + (["/etc/openbao/tls/hooks.d"] if name == CA_HOST else [])


# OpenBao "down": its port refused on the CA host (a table of the drill's own, ahead of the
# role's), for every client, the CA host's own listener renewal included.
OPENBAO_DOWN = (
    "nft add table inet sl_drill && nft add chain inet sl_drill input "
    "'{ type filter hook input priority -10 ; }' && "
    "nft add rule inet sl_drill input tcp dport 8200 reject with tcp reset"
)
OPENBAO_UP = "nft delete table inet sl_drill"


@pytest.fixture(scope="module")
def left_alone(rotation, hosts):
    """Short certificates from one converge, then nothing from the controller. At once OpenBao
    goes away, for more than half the certificates' life and past the point where the timers
    want to renew (they retry with backoff); the mesh carries requests all along. OpenBao comes
    back with a margin before the first certificate expires, and the timers must renew every
    certificate, each renewal running the reload hooks. Afterwards a day again."""
    ca = hosts[CA_HOST]
    try:
        yield drill(hosts, ca)
    finally:
        # A day again and no test hook, whatever happened on the way.
        for name, host in hosts.items():
            host.check_output(f"rm -f {HOOK_LOG} " + " ".join(f"{d}/{TEST_HOOK}" for d in hook_dirs(name)))
        back = ansible_playbook(
            "playbooks/openbao.yml", "playbooks/pki.yml", "-e", json.dumps(FORCE), log="pki-back-to-a-day.log"
        )
        assert back.rc == 0, back.output[-3000:]


def drill(hosts, ca) -> dict:
    """left_alone's drill: the hooks and short certificates, OpenBao away, the timers' renewals."""
    for name, host in hosts.items():
        for directory in hook_dirs(name):
            host.check_output(
                f'printf \'#!/bin/sh\\necho "$SEVENLEAGUE_PKI_NAME $SEVENLEAGUE_PKI_SERIAL" '
                f">> {HOOK_LOG}\\n' > {directory}/{TEST_HOOK} && chmod 755 {directory}/{TEST_HOOK}"
            )
        host.check_output(f"rm -f {HOOK_LOG}")
    short = ansible_playbook(
        "playbooks/openbao.yml", "playbooks/pki.yml", "-e", json.dumps(SHORT), log="pki-short-ttl.log"
    )
    assert short.rc == 0, short.output[-3000:]
    issued, ends = certificates(hosts), expiries(hosts)
    with steady_load(hosts["app1.sevenleague.test"], MESH_URL, 20) as load:
        ca.check_output(OPENBAO_DOWN)
        down_at = time.time()
        try:
            # Back 40 s before the first certificate ends: the certificates issued first are
            # past their renewal point by then, and their timers have tried.
            time.sleep(max(0.0, min(ends.values()) - 40 - time.time()))
            during = certificates(hosts)
        finally:
            ca.check_output(OPENBAO_UP)
        up_at = time.time()
        renewed, renewed_at = {}, {}
        while time.time() - up_at < SHORT_TTL and len(renewed) < len(issued):
            time.sleep(3)
            for key, value in certificates(hosts).items():
                if value != issued[key] and key not in renewed:
                    renewed[key], renewed_at[key] = value, time.time()
    logs = {
        name: host.file(HOOK_LOG).content_string if host.file(HOOK_LOG).exists else "" for name, host in hosts.items()
    }
    journals = {
        name: host.check_output("journalctl -t sevenleague-pki --no-pager -o cat --since=-15min")
        for name, host in hosts.items()
    }
    # The drill's figures, for docs/operations.md.
    (REPORTS / "openbao-away.json").write_text(
        json.dumps(
            {
                "certificate_seconds": SHORT_TTL,
                "openbao_away_seconds": round(up_at - down_at),
                "renewed_seconds_after_openbao_returned": {
                    f"{name} {cert}": round(at - up_at) for (name, cert), at in renewed_at.items()
                },
                "seconds_left_at_renewal": {
                    f"{name} {cert}": round(ends[(name, cert)] - at) for (name, cert), at in renewed_at.items()
                },
                "mesh_requests": load,
            },
            indent=1,
        )
    )
    return {
        "issued": issued,
        "ends": ends,
        "during": during,
        "renewed": renewed,
        "renewed_at": renewed_at,
        "down": up_at - down_at,
        "logs": logs,
        "journals": journals,
        "load": load,
    }


def test_services_keep_working_on_their_certificates_while_openbao_is_away(left_alone):
    drill = left_alone
    assert drill["down"] > SHORT_TTL / 2, drill["down"]
    assert drill["during"] == drill["issued"], "a certificate changed while OpenBao was away"
    assert drill["load"]["failed"] == 0 and drill["load"]["ok"] > 20 * drill["down"] * 0.9, drill["load"]


def test_renewals_retry_with_backoff_while_openbao_is_away(left_alone):
    retried = [
        name
        for name, journal in left_alone["journals"].items()
        if re.search(r"attempt \d+/\d+ failed: cannot reach OpenBao .*; retrying in", journal)
    ]
    assert retried, {name: journal[-1500:] for name, journal in left_alone["journals"].items()}


def test_every_timer_renews_its_certificate_once_openbao_is_back_before_anything_expires(left_alone):
    drill = left_alone
    missing = sorted(set(drill["issued"]) - set(drill["renewed"]))
    assert not missing, f"not renewed by their timers within {SHORT_TTL} s of OpenBao's return: {missing}"
    late = {
        key: round(drill["renewed_at"][key] - end)
        for key, end in drill["ends"].items()
        if drill["renewed_at"][key] >= end
    }
    assert not late, f"renewed only after the certificate ended (seconds late): {late}"
    for (name, cert), new_serial in drill["renewed"].items():
        # The converge's install ran the hook, then the timer's renewal; each names its serial.
        logs = drill["logs"][name]
        assert f"{cert} {drill['issued'][(name, cert)]}" in logs and f"{cert} {new_serial}" in logs, (name, cert, logs)
        assert f"certificate {new_serial} valid until" in drill["journals"][name], drill["journals"][name][-2000:]


def test_openbao_serves_its_renewed_listener_certificate(left_alone, hosts, openbao_root):
    issued = left_alone["issued"]
    now = serial(hosts[CA_HOST], LISTENER_CONFIG)
    assert now != issued[(CA_HOST, "openbao")]
    served = subprocess.run(
        f"openssl s_client -connect 10.213.7.11:8200 -CAfile {openbao_root} -verify_return_error"
        f" </dev/null 2>/dev/null | openssl x509 -noout -serial",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert served.stdout.strip().split("=")[1].lower() == now
