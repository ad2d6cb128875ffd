"""A retired host's still valid certificate is refused by the rest of the fleet: playbooks/retire-host.yml
revokes app1's certificates at OpenBao, deletes its roles and hands every other host the new CRL, and
app2's Envoy then refuses app1's TLS handshake, within REFUSED_WITHIN seconds of the playbook's end;
app1's own renewal is refused too. Back in the inventory's hands, the converge gives app1 its roles
again and the controller a new certificate (its own was revoked), and app1 renews on its own again.
(A host that leaves the inventory loses its roles and certificates the same way, by the converge
after it left: test_rollout.py's app3.)"""

from __future__ import annotations

import json
import time

from conftest import CONFIG, CURRENT, REPORTS, ansible_playbook, renewal_roles, serial, wait_for

RETIRED, PEER = "app1.sevenleague.test", "app2.sevenleague.test"
# app2's inbound listener for greeter, which app1 (frontend) calls: its firewall lets app1 in, so a
# handshake that completes gives an HTTP status, and a refused certificate gives none.
PEER_MESH = ("10.213.7.22", 8443)
# Envoy applies a renamed SDS file as soon as its directory watch fires: seconds, given 30.
REFUSED_WITHIN = 30
RENEW = f"sevenleague-pki renew --force --config {CONFIG}"


def handshake(host) -> tuple[int, str]:
    """(curl's exit code, HTTP status) of app1 calling app2's Envoy with app1's current certificate."""
    address, port = PEER_MESH
    run = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {PEER}:{port}:{address} "
        f"--cert {CURRENT}/fullchain.pem --key {CURRENT}/key.pem --cacert {CURRENT}/ca.pem https://{PEER}:{port}/"
    )
    return run.rc, run.stdout.strip()


def test_a_retired_hosts_certificate_is_refused_by_the_fleet(hosts):
    retired = hosts[RETIRED]
    before = serial(retired)
    rc, code = handshake(retired)
    assert rc == 0 and code.isdigit() and code != "000", (rc, code)
    try:
        started = time.monotonic()
        run = ansible_playbook("playbooks/retire-host.yml", "-e", f"retire_host={RETIRED}", log="retire-app1.log")
        took = time.monotonic() - started
        assert run.rc == 0, run.output[-3000:]
        # OpenBao names serials with separators (xx-xx-...), the tool without.
        revoked = run.output.split("Revoked:", 1)[-1].split("\n", 1)[0].replace("-", "").replace(":", "")
        assert before.lower().lstrip("0") in revoked.lower(), run.output[-3000:]
        assert "renew-" + RETIRED not in renewal_roles()
        # Still valid (24 h), but revoked: app2 refuses it.
        wait_for(lambda: handshake(retired)[0] != 0, REFUSED_WITHIN, 1, f"{PEER} refusing {RETIRED}'s certificate")
        refused_at = time.monotonic()
        # And OpenBao refuses the host's own renewal: its login role is gone, its certificate revoked.
        refused = retired.run(RENEW)
        assert refused.rc != 0 and "refused the login" in refused.stdout + refused.stderr, refused.stderr
        assert serial(retired) == before
        # The figures of docs/runbooks/host-compromised.md.
        (REPORTS / "retire.json").write_text(
            json.dumps(
                {
                    "retire_host_playbook_seconds": round(took, 1),
                    "refused_seconds_after_decision": round(refused_at - started, 1),
                },
                indent=1,
            )
        )
    finally:
        # Still in the inventory: the converge gives its roles back, then the controller a new certificate.
        back = ansible_playbook("playbooks/openbao.yml", "--tags", "openbao_init,openbao_pki", log="retire-back.log")
        reissued = ansible_playbook(
            "playbooks/pki.yml", "--limit", RETIRED, "-e", '{"pki_force_renew": true}', log="retire-reissue.log"
        )
    assert back.rc == 0, back.output[-3000:]
    assert reissued.rc == 0, reissued.output[-3000:]
    reissued_serial = serial(retired)
    assert reissued_serial != before
    assert handshake(retired) == (rc, code)
    # Its own renewal works again, with the certificate the controller gave it.
    renewed = retired.run(RENEW)
    assert renewed.rc == 0, renewed.stdout + renewed.stderr
    assert serial(retired) not in (before, reissued_serial)
