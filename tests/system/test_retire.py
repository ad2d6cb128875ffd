"""A retired host's still valid certificate is refused by the rest of the fleet: playbooks/retire-host.yml
revokes app2's certificates at OpenBao, deletes its roles and hands every other host the new CRL, and
app1's Envoy then refuses app2's TLS handshake, within REFUSED_WITHIN seconds of the playbook's end.
app2 is given its roles and a new certificate back afterwards, whatever happened."""

from __future__ import annotations

import json
import time

from conftest import CURRENT, REPORTS, ansible_playbook, renewal_roles, serial, wait_for

RETIRED, PEER = "app2.sevenleague.test", "app1.sevenleague.test"
# app1's inbound listener (frontend's mesh_port): app2 may not call it (403 after the handshake), so
# a handshake that completes gives a status, and a refused certificate gives none.
PEER_MESH = ("10.213.7.21", 8444)
# Envoy applies a renamed SDS file as soon as its directory watch fires: seconds, given 30.
REFUSED_WITHIN = 30


def handshake(host) -> tuple[int, str]:
    """(curl's exit code, HTTP status) of app2 calling app1's Envoy with app2's current certificate."""
    address, port = PEER_MESH
    run = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {PEER}:{port}:{address} "
        f"--cert {CURRENT}/fullchain.pem --key {CURRENT}/key.pem --cacert {CURRENT}/ca.pem https://{PEER}:{port}/"
    )
    return run.rc, run.stdout.strip()


def test_a_retired_hosts_certificate_is_refused_by_the_fleet(hosts):
    app2 = hosts[RETIRED]
    before = serial(app2)
    rc, code = handshake(app2)
    assert rc == 0 and code == "403", (rc, code)
    try:
        started = time.monotonic()
        retired = ansible_playbook("playbooks/retire-host.yml", "-e", f"retire_host={RETIRED}", log="retire-app2.log")
        took = time.monotonic() - started
        assert retired.rc == 0, retired.output[-3000:]
        # OpenBao names serials with separators (xx-xx-...), the tool without.
        revoked = retired.output.split("Revoked:", 1)[-1].split("\n", 1)[0].replace("-", "").replace(":", "")
        assert before.lower().lstrip("0") in revoked.lower(), retired.output[-3000:]
        assert "renew-" + RETIRED not in renewal_roles()
        # Still valid (24 h), but revoked: app1 refuses it.
        wait_for(lambda: handshake(app2)[0] != 0, REFUSED_WITHIN, 1, f"app1 refusing {RETIRED}'s certificate")
        # The figures of docs/runbooks/host-compromised.md.
        (REPORTS / "retire.json").write_text(
            json.dumps(
                {
                    "retire_host_playbook_seconds": round(took, 1),
                    "refused_seconds_after_decision": round(time.monotonic() - started, 1),
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
    assert serial(app2) != before
    assert handshake(app2) == (0, "403")
