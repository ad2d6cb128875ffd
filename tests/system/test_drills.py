"""Fault drills on the lab (docs/operations.md has what an operator does in each).

OpenBao sealed after a restart: a certificate run and a host's own renewal stop
with an error that says so and what to do, nothing on the host changes, and the
documented unseal (the openbao playbook's init tag, with the holders'
passphrases) brings renewals back.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest
from conftest import ansible_playbook
from test_pki import CA_HOST, CONFIG, CURRENT, OPENBAO, SERVER_CA, serial

APP1 = "app1.sevenleague.test"
UNSEAL_HINT = "is sealed: unseal it (see roles/openbao/README.md)"


def health() -> dict:
    """OpenBao's health, as the controller reads it (sealed answers 503, still with the JSON)."""
    answer = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(SERVER_CA),
                             f"{OPENBAO}/v1/sys/health"], capture_output=True, text=True)
    return json.loads(answer.stdout) if answer.stdout.strip().startswith("{") else {}


@pytest.fixture(scope="module")
def sealed(hosts):
    """OpenBao restarted (it comes back sealed); what the fleet sees; then the documented unseal."""
    app1 = hosts[APP1]
    hosts[CA_HOST].check_output("systemctl restart openbao")
    deadline = time.monotonic() + 60
    while not health().get("sealed") and time.monotonic() < deadline:
        time.sleep(1)
    state = health()
    before = {"serial": serial(app1), "release": app1.file(CURRENT).linked_to}
    run = ansible_playbook("playbooks/pki.yml", "--limit", APP1, "-e", json.dumps({"pki_force_renew": True}),
                           log="pki-openbao-sealed.log")
    # The timer's own renewal, with two tries instead of its backoff over a minute.
    config = json.loads(app1.file(CONFIG).content_string)
    config["openbao"].update(attempts=2, backoff_initial=1)
    app1.check_output(f"umask 077 && printf '%s' {shlex.quote(json.dumps(config))} > /run/sl-sealed.json")
    timer = app1.run("sevenleague-pki renew --force --config /run/sl-sealed.json")
    app1.run("rm -f /run/sl-sealed.json")
    after = {"serial": serial(app1), "release": app1.file(CURRENT).linked_to}
    unseal = ansible_playbook("playbooks/openbao.yml", "--tags", "openbao_init", log="openbao-unseal.log")
    renewed = app1.run(f"sevenleague-pki renew --force --config {CONFIG}")
    return {"state": state, "before": before, "run": run, "timer": timer, "after": after, "unseal": unseal,
            "renewed": renewed, "health": health(), "serial": serial(app1)}


def test_openbao_comes_back_sealed_after_a_restart(sealed):
    assert sealed["state"].get("initialized") and sealed["state"].get("sealed"), sealed["state"]


def test_a_certificate_run_against_a_sealed_openbao_says_so_and_changes_nothing(sealed):
    run = sealed["run"]
    assert run.rc != 0
    assert UNSEAL_HINT in run.output, run.output[-3000:]
    assert sealed["after"] == sealed["before"]


def test_a_hosts_own_renewal_against_a_sealed_openbao_says_so_and_keeps_its_certificate(sealed):
    timer = sealed["timer"]
    assert timer.rc != 0
    assert "sealed" in timer.stdout + timer.stderr, timer.stderr[-2000:]
    assert sealed["after"] == sealed["before"]


def test_the_documented_unseal_brings_renewals_back(sealed):
    assert sealed["unseal"].rc == 0, sealed["unseal"].output[-3000:]
    assert sealed["health"].get("sealed") is False, sealed["health"]
    assert sealed["renewed"].rc == 0, sealed["renewed"].stdout + sealed["renewed"].stderr
    assert sealed["serial"] != sealed["before"]["serial"]
