"""OpenBao's intermediate CA rolled over while every host keeps renewing.

Starts from the fleet on OpenBao, as site.yml converged it; the rollover always runs to its
end, so the fleet is never left between two intermediates.
"""

import json
import subprocess

import pytest
from conftest import (
    CONFIG,
    CURRENT,
    LISTENER_CONFIG,
    OPENBAO,
    ROOT,
    SERVER_CA,
    ansible_playbook,
    ansible_token,
    serial,
    verify,
)

PLAYBOOK = "playbooks/rotate-openbao-intermediate.yml"
RECORD = ROOT / "inventories" / "lab" / ".openbao" / "intermediate-rollover.json"
CA_HOST, APP2 = "ca1.sevenleague.test", "app2.sevenleague.test"
LISTENER_CURRENT = "/etc/openbao/tls/current"
APP2_TIMER = "sevenleague-pki-renew-host.timer"
OPENBAO_ROOT = str(ROOT / "inventories" / "lab" / ".openbao" / "root.crt")


def api(path: str) -> dict:
    answer = subprocess.run(
        ["curl", "-sSf", "--cacert", str(SERVER_CA), "-H", f"X-Vault-Token: {ansible_token()}", f"{OPENBAO}/v1/{path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(answer.stdout)["data"]


def signing_issuers() -> list[str]:
    """The intermediate mount's issuers that have a key (the root's imported copy has none)."""
    listing = api("pki_int/issuers?list=true")["key_info"]
    return sorted(issuer for issuer, info in listing.items() if info["key_id"])


def login_trust() -> str:
    """What the certificate login trusts: each host's own login role, all trusting the same."""
    roles = api("auth/cert/certs?list=true")["keys"]
    trusts = {api(f"auth/cert/certs/{role}")["certificate"] for role in roles}
    assert len(trusts) == 1, roles
    return trusts.pop()


def chain(host, directory: str = CURRENT) -> str:
    return host.file(f"{directory}/chain.pem").content_string.strip()


@pytest.fixture(scope="module")
def rollover(hosts):
    """Phase 1 alone; a timer renewal on app2 in between; the rest; the playbook once more."""
    app2 = hosts[APP2]
    before = {
        "issuers": signing_issuers(),
        "chain": chain(app2),
        "serials": {name: serial(host) for name, host in hosts.items()},
    }
    # app2's own timer stays still until the renewal below: run by chance in between, it would
    # renew first and leave that renewal nothing to do.
    app2.check_output(f"systemctl stop {APP2_TIMER}")
    try:
        trust = ansible_playbook(PLAYBOOK, "-e", "rotate_openbao_until=trust", log="rotate-openbao-trust.log")
        middle = {"issuers": signing_issuers(), "login_trust": login_trust()}
        # Not forced: the default issuer changed, so the renewal policy says it is due.
        timer = app2.run(f"sevenleague-pki renew --config {CONFIG}")
        middle["app2_chain"] = chain(app2)
    finally:
        app2.check_output(f"systemctl start {APP2_TIMER}")
        # The rest of the rollover, whatever failed in between.
        rest = ansible_playbook(PLAYBOOK, log="rotate-openbao.log")
    after = {"issuers": signing_issuers(), "login_trust": login_trust()}
    again = ansible_playbook(PLAYBOOK, log="rotate-openbao-again.log")
    return {
        "before": before,
        "trust": trust,
        "middle": middle,
        "timer": timer,
        "rest": rest,
        "after": after,
        "again": again,
    }


def test_first_phase_adds_an_intermediate_that_login_trusts_beside_the_old_one(rollover):
    run, before, middle = rollover["trust"], rollover["before"], rollover["middle"]
    assert run.rc == 0, run.output[-3000:]
    assert len(before["issuers"]) == 1
    assert len(middle["issuers"]) == 2 and before["issuers"][0] in middle["issuers"]
    assert middle["login_trust"].count("BEGIN CERTIFICATE") == 2
    assert before["chain"].split("-----END CERTIFICATE-----")[0] in middle["login_trust"]


def test_a_host_still_on_the_old_intermediate_logs_in_and_renews_from_the_new_one(rollover, hosts, tmp_path):
    timer = rollover["timer"]
    assert timer.rc == 0, timer.stdout + timer.stderr
    assert json.loads(timer.stdout)["changed"] is True
    # The login's token went as soon as it was used.
    assert "could not revoke the login token" not in timer.stderr
    assert rollover["middle"]["app2_chain"] != rollover["before"]["chain"]
    result = verify(hosts[APP2], tmp_path, OPENBAO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rollover_moves_every_certificate_to_the_new_intermediate_and_retires_the_old(rollover, hosts, tmp_path):
    run, after = rollover["rest"], rollover["after"]
    assert run.rc == 0, run.output[-3000:]
    old, new = rollover["before"]["issuers"][0], after["issuers"]
    assert len(new) == 1 and new[0] != old and new[0] in rollover["middle"]["issuers"]
    # Login trusts the new intermediate alone, which every host's chain holds.
    assert after["login_trust"].count("BEGIN CERTIFICATE") == 1
    new_intermediate = after["login_trust"].strip()
    for name, host in hosts.items():
        assert serial(host) != rollover["before"]["serials"][name], name
        assert new_intermediate in chain(host), name
        result = verify(host, tmp_path, OPENBAO_ROOT)
        assert result.returncode == 0, (name, result.stdout + result.stderr)
    assert new_intermediate in chain(hosts[CA_HOST], LISTENER_CURRENT)
    assert serial(hosts[CA_HOST], LISTENER_CONFIG)
    # The root revoked the old intermediate: its serial is on the root's CRL.
    old_intermediate = rollover["before"]["chain"]
    crl = subprocess.run(
        f"curl -sSf --cacert {SERVER_CA} {OPENBAO}/v1/pki/crl/pem | openssl crl -noout -text",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    old_cert_serial = (
        subprocess.run(
            ["openssl", "x509", "-noout", "-serial"], input=old_intermediate, capture_output=True, text=True, check=True
        )
        .stdout.split("=")[1]
        .strip()
    )
    assert old_cert_serial.upper() in crl.replace(":", "").upper()


def test_the_playbook_after_a_finished_rollover_changes_nothing(rollover):
    run = rollover["again"]
    assert run.rc == 0, run.output[-3000:]
    assert {host: r["changed"] for host, r in run.recap.items() if r["changed"]} == {}
    assert "nothing to do" in run.output
    assert json.loads(RECORD.read_text())["issuer"] == rollover["after"]["issuers"][0]
