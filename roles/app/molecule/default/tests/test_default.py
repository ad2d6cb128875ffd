"""Each service of the host runs at its pinned version with the configuration the service map gives
it, checked by the app before it is installed; a changed configuration restarts that service only,
a bad one is refused and changes nothing; the deployed versions are a local fact and a metric."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import testinfra

HOST = "sl-molecule-app"
SCENARIO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host(f"podman://{HOST}")


def main_pid(host, unit):
    return host.check_output(f"systemctl show -p MainPID --value {unit}")


def converge(services: dict) -> subprocess.CompletedProcess:
    """The scenario's converge with another service map."""
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "-e",
            json.dumps({"sevenleague_services": services}),
            str(SCENARIO / "converge.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


SERVICES = {
    "greeter": {"version": "1.1.0-2", "port": 8081, "mesh_port": 8443, "egress_port": 10001, "calls": []},
    "frontend": {
        "version": "1.1.0-2",
        "port": 8080,
        "mesh_port": 8444,
        "egress_port": 10000,
        "calls": ["greeter"],
        "config": {"upstream_timeout_seconds": 3},
    },
}


@pytest.mark.parametrize("name", ["greeter", "frontend"])
def test_each_service_runs_its_pinned_version_and_is_healthy(host, name):
    assert host.package(name).version == "1.1.0-2"
    assert host.service(name).is_running and host.service(name).is_enabled
    assert json.loads(host.check_output(f"curl -sf http://127.0.0.1:{SERVICES[name]['port']}/healthz")) == {
        "status": "ok"
    }


def test_the_configuration_comes_from_the_service_map(host):
    assert json.loads(host.file("/etc/greeter/greeter.json").content_string) == {
        "listen_address": "127.0.0.1",
        "port": 8081,
    }
    # frontend calls greeter through its local Envoy's listener for greeter.
    assert json.loads(host.file("/etc/frontend/frontend.json").content_string) == {
        "listen_address": "127.0.0.1",
        "port": 8080,
        "upstream_url": "http://127.0.0.1:10001",
        "upstream_timeout_seconds": 3,
    }


def test_the_deployed_versions_are_a_fact_and_a_metric(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/app.fact").content_string)
    assert fact == {
        "frontend": {"package": "frontend", "version": "1.1.0-2"},
        "greeter": {"package": "greeter", "version": "1.1.0-2"},
    }
    metric = host.file("/var/lib/prometheus/node-exporter/sevenleague_app.prom").content_string
    assert 'sevenleague_app_version_info{service="greeter",version="1.1.0-2"} 1' in metric
    assert 'sevenleague_app_version_info{service="frontend",version="1.1.0-2"} 1' in metric


def test_a_configuration_the_app_refuses_is_not_installed(host):
    before = host.file("/etc/greeter/greeter.json").content_string
    pid = main_pid(host, "greeter")
    bad = json.loads(json.dumps(SERVICES))
    bad["greeter"]["config"] = {"drain_seconds": -1}
    run = converge(bad)
    assert run.returncode != 0
    # The app's own message, as Ansible reports the failed check (on stderr under Molecule's settings).
    assert "key 'drain_seconds' must be" in run.stdout + run.stderr, (run.stdout + run.stderr)[-2000:]
    assert host.file("/etc/greeter/greeter.json").content_string == before
    assert main_pid(host, "greeter") == pid


def test_a_changed_configuration_restarts_that_service_only(host):
    pids = {name: main_pid(host, name) for name in SERVICES}
    changed = json.loads(json.dumps(SERVICES))
    changed["greeter"]["config"] = {"drain_seconds": 1}
    try:
        run = converge(changed)
        assert run.returncode == 0, run.stdout[-3000:]
        assert json.loads(host.file("/etc/greeter/greeter.json").content_string)["drain_seconds"] == 1
        assert main_pid(host, "greeter") != pids["greeter"]
        assert main_pid(host, "frontend") == pids["frontend"]
    finally:
        assert converge(SERVICES).returncode == 0
