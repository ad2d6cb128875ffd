"""Fault drills on the lab (docs/operations.md has what an operator does in each).

A host lost in the middle of a converge (the layers of site.yml after the
certificates: logs, metrics, apps, mesh): the run names it, every other host
completes every layer, and a rerun heals the lost host and changes nothing on
the others.  (The layers before are the same plays: the drill runs the ones a
host is still reachable for at the start, so the lost host misses several.)

OpenBao sealed after a restart: its API port refuses every host (a fleet host
cannot reset the unseal), a certificate run and a host's own renewal stop with
an error that says it may be sealed and what to do, nothing on the host changes,
and the documented unseal (the openbao playbook's init tag, with the holders'
passphrases, through OpenBao's unix listener) opens the port and brings
renewals back.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from conftest import (
    CA_HOST,
    CONFIG,
    CURRENT,
    OPENBAO,
    SERVER_CA,
    RunningPlaybook,
    ansible_playbook,
    layers_playbook,
    serial,
    stopped,
)

APP1, APP2 = "app1.sevenleague.test", "app2.sevenleague.test"
# The layers the drill converges, as site.yml imports them; a file the last layer (the mesh)
# writes on every host, and the play the host is lost at: after the logs layer, before the
# metrics, apps and mesh layers.
LAYERS = ["logging.yml", "monitoring.yml", "apps.yml", "mesh.yml"]
LAST_LAYER_FILE = "/etc/sevenleague/pki/hooks.d/70-envoy"
LOST_AT = "PLAY [Metrics on every host]"


@pytest.fixture(scope="module")
def host_lost(hosts, tmp_path_factory):
    """The layers with app2 powered off once the run reaches the metrics layer, app2 booted again,
    then the layers once more.  Every host first loses LAST_LAYER_FILE, so the run has work on each of
    them up to its very end."""
    running = None
    layers = layers_playbook(tmp_path_factory.mktemp("drill"), *LAYERS)
    try:
        for host in hosts.values():
            host.check_output(f"rm -f {LAST_LAYER_FILE}")
        running = RunningPlaybook(layers, log="site-host-lost.log")
        reached = running.wait_for(LOST_AT)
        with stopped(APP2):
            run = running.finish()
        completed = {name: host.file(LAST_LAYER_FILE).exists for name, host in hosts.items()}
    finally:
        if running is not None:
            running.proc.wait(timeout=1800)  # never two runs at once
        # The drill's rerun also puts back what the drill took, whatever failed above.
        rerun = ansible_playbook(layers, log="site-after-host-lost.log")
    greeting = hosts[APP1].run("curl -sf --max-time 5 'http://127.0.0.1:8080/?name=drill'")
    return {
        "reached": reached,
        "run": run,
        "completed": completed,
        "rerun": rerun,
        "greeting": greeting,
        "healed": hosts[APP2].file(LAST_LAYER_FILE).exists,
    }


def test_a_host_lost_in_the_middle_of_a_converge_is_named_and_the_others_complete(host_lost):
    run = host_lost["run"]
    assert host_lost["reached"], run.output[-3000:]
    # 4: some host was unreachable; no host failed.
    assert run.rc == 4, run.output[-3000:]
    assert f"fatal: [{APP2}]: UNREACHABLE!" in run.output
    assert run.recap[APP2]["unreachable"] == 1, run.recap
    others = {name: r for name, r in run.recap.items() if name not in (APP2, "localhost")}
    assert others and all(r["failed"] == 0 and r["unreachable"] == 0 for r in others.values()), run.recap
    # Every other host went through the last layer; the lost one did not get there.
    assert host_lost["completed"] == {name: name != APP2 for name in host_lost["completed"]}


def test_a_rerun_heals_the_lost_host_and_changes_nothing_on_the_others(host_lost):
    rerun = host_lost["rerun"]
    assert rerun.rc == 0, rerun.output[-3000:]
    assert rerun.recap[APP2]["changed"] > 0, rerun.recap
    assert all(r["changed"] == 0 for name, r in rerun.recap.items() if name != APP2), rerun.recap
    assert host_lost["healed"]
    greeting = host_lost["greeting"]
    assert greeting.rc == 0, greeting.stderr
    assert json.loads(greeting.stdout)["greeter"]["greeting"] == "Hello, drill!"


# A sealed OpenBao's API port refuses connections: the answer every client gets.
UNSEAL_HINT = "or sealed, its API port closed until it is unsealed: unseal it (see roles/openbao/README.md)"
SOCKET_STATUS = "BAO_ADDR=unix:///run/openbao/api.sock bao status -format=json"
SERVER_CA_ON_HOSTS = "/etc/sevenleague/pki/openbao-server-ca.pem"


def health() -> dict:
    """OpenBao's health, as the controller reads it ({} when its port refuses, as while sealed)."""
    answer = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(SERVER_CA), f"{OPENBAO}/v1/sys/health"],
        capture_output=True,
        text=True,
    )
    return json.loads(answer.stdout) if answer.stdout.strip().startswith("{") else {}


@pytest.fixture(scope="module")
def sealed(hosts):
    """OpenBao restarted (it comes back sealed); what the fleet sees; then the documented unseal."""
    app1, ca = hosts[APP1], hosts[CA_HOST]
    # systemctl returns once OpenBao is ready (Type=notify), sealed.
    ca.check_output("systemctl restart openbao")
    try:
        state = json.loads(ca.run(SOCKET_STATUS).stdout or "{}")
        reset = app1.run(
            f"curl -sS --max-time 3 --cacert {SERVER_CA_ON_HOSTS} -X PUT --data '{{\"reset\": true}}' "
            f"{OPENBAO}/v1/sys/unseal"
        )
        after_reset = json.loads(ca.run(SOCKET_STATUS).stdout or "{}")
        before = {"serial": serial(app1), "release": app1.file(CURRENT).linked_to}
        run = ansible_playbook(
            "playbooks/pki.yml",
            "--limit",
            APP1,
            "-e",
            json.dumps({"pki_force_renew": True}),
            log="pki-openbao-sealed.log",
        )
        # The timer's own renewal, with two tries instead of its backoff over a minute.
        config = json.loads(app1.file(CONFIG).content_string)
        config["openbao"].update(attempts=2, backoff_initial=1)
        app1.check_output(f"umask 077 && printf '%s' {shlex.quote(json.dumps(config))} > /run/sl-sealed.json")
        timer = app1.run("sevenleague-pki renew --force --config /run/sl-sealed.json")
        after = {"serial": serial(app1), "release": app1.file(CURRENT).linked_to}
    finally:
        app1.run("rm -f /run/sl-sealed.json")
        # The documented unseal is also what leaves OpenBao as the drill found it.
        unseal = ansible_playbook("playbooks/openbao.yml", "--tags", "openbao_init", log="openbao-unseal.log")
    renewed = app1.run(f"sevenleague-pki renew --force --config {CONFIG}")
    return {
        "state": state,
        "reset": reset,
        "after_reset": after_reset,
        "before": before,
        "run": run,
        "timer": timer,
        "after": after,
        "unseal": unseal,
        "renewed": renewed,
        "health": health(),
        "serial": serial(app1),
    }


def test_openbao_comes_back_sealed_after_a_restart(sealed):
    assert sealed["state"].get("initialized") and sealed["state"].get("sealed"), sealed["state"]


def test_no_fleet_host_reaches_the_unseal_while_openbao_is_sealed(sealed):
    # curl's exit 7: the connection was refused, before any byte of HTTP.
    assert sealed["reset"].rc == 7, sealed["reset"].stdout + sealed["reset"].stderr
    assert sealed["after_reset"].get("sealed"), sealed["after_reset"]


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
