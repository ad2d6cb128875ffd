"""Prometheus on the monitoring host scrapes every host's node_exporter over
mutual TLS with targets from the inventory, loads the shipped rules, and
Alertmanager hands alerts to the journal receiver; local users reach neither
Alertmanager's API nor the receiver."""

import json
import os
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import testinfra

MON, TARGET = "sl-molecule-prometheus", "sl-molecule-prometheus-target"
ROLE = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
RUNBOOKS = "https://runbooks.molecule.test/docs/runbooks"
PASSWORD_FILE = "/etc/prometheus/alertmanager.password"
SECRET_FILE = "/etc/prometheus/alert-journal.secret"
# root's curl with the password Prometheus uses (the shell reads the file).
AM_AUTH = f'-u "prometheus:$(cat {PASSWORD_FILE})"'
AM = "http://127.0.0.1:9093"
JOURNAL = "http://127.0.0.1:9097/"
BEARER = f'-H "Authorization: Bearer $(cat {SECRET_FILE})"'


@pytest.fixture(scope="module")
def mon():
    return testinfra.get_host(f"podman://{MON}")


def api(mon, path: str, port: int = 9090):
    return json.loads(mon.check_output(f"curl -sSf 'http://127.0.0.1:{port}{path}'"))["data"]


def wait_for(check, timeout: float, interval: float = 2.0):
    """check() until it returns something truthy, or its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_every_host_is_a_node_target_up_under_its_inventory_name(mon):
    def targets():
        active = api(mon, "/api/v1/targets?state=active")["activeTargets"]
        found = {(t["labels"]["job"], t["labels"]["instance"]): t for t in active}
        return found if all(t["health"] == "up" for t in found.values()) and len(found) == 4 else None

    found = wait_for(targets, 60) or api(mon, "/api/v1/targets?state=active")["activeTargets"]
    assert isinstance(found, dict), json.dumps(found, indent=1)[:3000]
    assert sorted(found) == [("alertmanager", MON), ("node", MON), ("node", TARGET), ("prometheus", MON)]
    target = found[("node", TARGET)]
    assert target["scrapeUrl"] == f"https://{TARGET}:9100/metrics"
    assert target["labels"]["env"] == "molecule" and target["labels"]["group"] == "apps"
    assert found[("node", MON)]["labels"]["group"] == "monitoring"


def test_the_file_sd_targets_come_from_the_inventory(mon):
    node = json.loads(mon.file("/etc/prometheus/file_sd/node.json").content_string)
    assert [t["labels"]["instance"] for t in node] == [MON, TARGET]
    assert node[1] == {
        "targets": [f"{TARGET}:9100"],
        "labels": {"instance": TARGET, "env": "molecule", "group": "apps"},
    }
    # No ca group in this inventory: the openbao job has no targets.
    assert json.loads(mon.file("/etc/prometheus/file_sd/openbao.json").content_string) == []
    assert json.loads(mon.file("/etc/prometheus/file_sd/envoy.json").content_string) == []


@pytest.mark.parametrize(
    "query",
    [
        # The pki role's textfile metric.
        'sevenleague_certificate_not_after_seconds{name="host"}',
        # The systemd collector of node_exporter 1.5 (Debian 12) and 1.9 (Debian 13).
        'node_systemd_unit_state{name="prometheus-node-exporter.service",state="active"} == 1',
    ],
)
def test_every_hosts_metrics_reach_prometheus(mon, query):
    def instances():
        result = api(mon, "/api/v1/query?query=" + urllib.parse.quote(query))["result"]
        return {r["metric"]["instance"] for r in result} == {MON, TARGET}

    assert wait_for(instances, 30)


def test_promtool_passes_the_installed_configuration(mon):
    result = mon.run("promtool check config /etc/prometheus/prometheus.yml")
    assert result.rc == 0, result.stdout + result.stderr


def test_every_shipped_rule_file_is_loaded_with_its_runbook_address(mon):
    shipped = sorted(p.name for p in (ROLE / "files" / "rules").glob("*.rules.yml"))
    installed = sorted(mon.check_output("ls /etc/prometheus/rules").split())
    assert installed == sorted([*shipped, "slo.rules.yml"])
    assert mon.run("grep -l RUNBOOK_BASE_URL /etc/prometheus/rules/*").stdout == ""
    groups = api(mon, "/api/v1/rules")["groups"]
    assert {Path(g["file"]).name for g in groups} == set(installed)
    assert "slo-greeter" in {g["name"] for g in groups}
    alerts = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert alerts
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOKS}/{alert['name']}.md"


def test_the_servers_listen_on_the_loopback_only(mon):
    listening = mon.check_output("ss -Hltn | awk '{print $4}'").split()
    for port in (9090, 9093, 9097):
        assert f"127.0.0.1:{port}" in listening
        assert not [a for a in listening if a.endswith(f":{port}") and not a.startswith("127.0.0.1:")]
    # A single Alertmanager: no cluster port.
    assert not [a for a in listening if a.endswith(":9094")]


def test_the_lifecycle_api_is_off_and_a_reload_goes_through_systemd(mon):
    assert mon.check_output("curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:9090/-/reload") == "403"

    def last_reload():
        result = api(mon, "/api/v1/query?query=prometheus_config_last_reload_success_timestamp_seconds")["result"]
        return float(result[0]["value"][1])

    before = last_reload()
    time.sleep(1.1)
    mon.check_output("systemctl reload prometheus")
    assert wait_for(lambda: last_reload() > before, 20, 1)
    ok = api(mon, "/api/v1/query?query=prometheus_config_last_reload_successful")["result"]
    assert ok[0]["value"][1] == "1"


def test_alertmanager_is_ready(mon):
    assert mon.check_output(f"curl -sSf {AM_AUTH} {AM}/-/ready").strip() == "OK"
    assert mon.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def status(mon, arguments: str, user: str = "root") -> str:
    """The HTTP status `user`'s curl gets for `arguments`."""
    return mon.check_output(f"runuser -u {user} -- curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 {arguments}")


def silences(mon, probe: str) -> list[dict]:
    """The silences (as root, with the password) whose matchers name `probe`."""
    found = json.loads(mon.check_output(f"curl -sSf {AM_AUTH} {AM}/api/v2/silences"))
    return [s for s in found if any(m["value"] == probe for m in s["matchers"])]


def silence(probe: str) -> str:
    return json.dumps(
        {
            "matchers": [{"name": "probe", "value": probe, "isRegex": False}],
            "startsAt": "2020-01-01T00:00:00Z",
            "endsAt": "2099-01-01T00:00:00Z",
            "createdBy": "molecule",
            "comment": "a probe from the Molecule scenario",
        }
    )


def test_a_local_user_cannot_silence_alerts(mon):
    token = uuid.uuid4().hex
    post = f"-X POST -H 'Content-Type: application/json' --data '{silence(token)}' {AM}/api/v2/silences"
    # The attack: any local account posts a silence on the loopback port, or lists them.
    assert status(mon, post, user="nobody") == "401"
    assert status(mon, f"{AM}/api/v2/silences", user="nobody") == "401"
    # The password file and root's amtool setup do not help it.
    assert mon.run(f"runuser -u nobody -- cat {PASSWORD_FILE}").rc != 0
    assert mon.run("runuser -u nobody -- amtool silence query").rc != 0
    assert silences(mon, token) == []
    # root with the password: the same request goes through (the control), and amtool works as is.
    created = json.loads(mon.check_output(f"curl -sSf {AM_AUTH} {post}"))["silenceID"]
    try:
        assert [s["id"] for s in silences(mon, token)] == [created]
        assert created in mon.check_output(f"amtool silence query -q probe={token}")
    finally:
        mon.check_output(f"curl -sSf {AM_AUTH} -X DELETE {AM}/api/v2/silence/{created}")


def test_the_secrets_are_readable_by_root_and_the_prometheus_user_only(mon):
    for path in (PASSWORD_FILE, SECRET_FILE, "/etc/prometheus/alertmanager-web.yml"):
        secret = mon.file(path)
        assert (secret.user, secret.group, secret.mode) == ("root", "prometheus", 0o640), path
    assert len(mon.file(PASSWORD_FILE).content_string.strip()) >= 32
    assert mon.run(f"runuser -u nobody -- cat {SECRET_FILE}").rc != 0


def test_an_alert_reaches_the_journal_as_one_line(mon):
    token = uuid.uuid4().hex
    alert = [
        {
            "labels": {"alertname": "MoleculeProbe", "severity": "ticket", "instance": MON, "probe": token},
            "annotations": {"summary": "a probe from the Molecule scenario"},
        }
    ]
    post_alert(mon, alert)
    line = wait_for(lambda: journal_lines(mon, token), 60)
    assert line.startswith("FIRING MoleculeProbe {"), line
    detail = json.loads(line.split(" ", 2)[2])
    assert detail["labels"]["probe"] == token and detail["annotations"]["summary"].startswith("a probe")


def post_alert(mon, alert: list[dict]) -> None:
    mon.check_output(
        f"curl -sSf {AM_AUTH} -X POST -H 'Content-Type: application/json' --data %s {AM}/api/v2/alerts",
        json.dumps(alert),
    )


def journal_lines(mon, token: str) -> str:
    return mon.check_output(f"journalctl -t sevenleague-alert -o cat --no-pager | grep {token} || true")


def test_a_webhook_post_without_the_secret_is_refused(mon):
    token = uuid.uuid4().hex
    forged = json.dumps({"alerts": [{"labels": {"alertname": "Forged", "probe": token}}]})
    post = f"-X POST -H 'Content-Type: application/json' --data '{forged}' {JOURNAL}"
    assert status(mon, post, user="nobody") == "401"
    assert status(mon, f"-H 'Authorization: Bearer not-the-secret' {post}") == "401"
    # The control: the same body with the secret goes through; the forged one never reached the journal.
    control = forged.replace(token, token + "-control")
    assert status(mon, f"{BEARER} -X POST --data '{control}' {JOURNAL}") == "200"
    assert wait_for(lambda: journal_lines(mon, token + "-control"), 20, 0.5)
    assert [line for line in journal_lines(mon, token).splitlines() if token + "-control" not in line] == []


def test_an_idle_connection_does_not_hold_up_the_journal(mon):
    # The attack: a local user keeps a connection to the receiver open with half a request,
    # opening the next one whenever the receiver drops the last.
    holder = "sl-molecule-idle-webhook-client"
    script = (
        "import socket\n"
        "while True:\n"
        "    s = socket.create_connection(('127.0.0.1', 9097))\n"
        "    s.sendall(b'POST / HTTP/1.1\\r\\nHost: x\\r\\n')\n"
        "    s.recv(1)\n"
        "    s.close()\n"
    )
    mon.check_output("systemd-run --unit %s -p User=nobody python3 -c %s", holder, script)
    try:
        held = "ss -Htn state established '( dport = :9097 )' | wc -l"
        assert wait_for(lambda: int(mon.check_output(held)) > 0, 10, 0.2)
        # While it is held, the receiver answers others at once (it drops the idle one after 10 s).
        started = time.monotonic()
        assert status(mon, f"{BEARER} -X POST --data '{{}}' {JOURNAL}") == "200"
        assert time.monotonic() - started < 5
        token = uuid.uuid4().hex
        post_alert(mon, [{"labels": {"alertname": "MoleculeIdleProbe", "severity": "ticket", "probe": token}}])
        assert wait_for(lambda: journal_lines(mon, token), 60, 1).startswith("FIRING MoleculeIdleProbe ")
    finally:
        mon.run(f"systemctl stop {holder}; systemctl reset-failed {holder}")


def test_the_journal_receiver_runs_confined(mon):
    props = dict(
        line.split("=", 1)
        for line in mon.check_output(
            "systemctl show -p DynamicUser -p ProtectSystem -p NoNewPrivileges sevenleague-alert-journal"
        ).splitlines()
    )
    assert props == {"DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes"}
    pid = mon.check_output("systemctl show -P MainPID sevenleague-alert-journal")
    assert mon.check_output(f"ps -o user= -p {pid}").strip() not in ("root", "prometheus")
