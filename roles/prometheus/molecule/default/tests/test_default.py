"""Prometheus on the monitoring host scrapes every host's node_exporter over
mutual TLS with targets from the inventory, loads the shipped rules, and
Alertmanager hands alerts to the journal receiver."""

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
    assert mon.check_output("curl -sSf http://127.0.0.1:9093/-/ready").strip() == "OK"
    assert mon.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_an_alert_reaches_the_journal_as_one_line(mon):
    token = uuid.uuid4().hex
    alert = [
        {
            "labels": {"alertname": "MoleculeProbe", "severity": "ticket", "instance": MON, "probe": token},
            "annotations": {"summary": "a probe from the Molecule scenario"},
        }
    ]
    mon.check_output(
        "curl -sSf -X POST -H 'Content-Type: application/json' --data %s http://127.0.0.1:9093/api/v2/alerts",
        json.dumps(alert),
    )
    query = f"journalctl -t sevenleague-alert -p warning -o cat --no-pager | grep {token} || true"
    line = wait_for(lambda: mon.check_output(query), 60)
    assert line.startswith("FIRING MoleculeProbe {"), line
    detail = json.loads(line.split(" ", 2)[2])
    assert detail["labels"]["probe"] == token and detail["annotations"]["summary"].startswith("a probe")


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
