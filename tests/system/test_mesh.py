"""The mesh on the lab after site.yml: frontend on app1 reaches greeter on app2 through both Envoys
over mutual TLS; greeter's listener refuses a fleet host that runs no service calling greeter;
Prometheus scrapes every Envoy.  Certificates that are missing, from another CA, expired or of a
name no service accepts: test_mtls.py's matrix.

The rotation under load is test_pki.py's (it rotates every certificate once for both files).
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import LAB_HOSTS, wait_for

APP1, APP2, MONITOR = "app1.sevenleague.test", "app2.sevenleague.test", "mon1.sevenleague.test"
GREETER = ("app2.sevenleague.test", "10.213.7.22", 8443)
CURRENT = "/etc/sevenleague/pki/current"
MTLS = f"--cert {CURRENT}/fullchain.pem --key {CURRENT}/key.pem --cacert {CURRENT}/ca.pem"


def call_greeter(host, options: str = MTLS) -> tuple[int, str]:
    """(curl's exit code, the HTTP status) of `host` calling greeter's mesh listener on app2 directly."""
    name, address, port = GREETER
    result = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {name}:{port}:{address} "
        f"{options} https://{name}:{port}/hello"
    )
    return result.rc, result.stdout.strip()


def envoy_requests(host, since: str) -> list[dict]:
    lines = host.check_output(f"journalctl -u envoy -o cat --since '{since}'").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_frontend_on_app1_gets_its_greeting_from_greeter_on_app2_through_both_envoys(hosts):
    since = hosts[APP1].check_output("date '+%Y-%m-%d %H:%M:%S'")
    answer = json.loads(hosts[APP1].check_output("curl -sf --max-time 5 'http://127.0.0.1:8080/?name=lab'"))
    assert answer["greeter"]["greeting"] == "Hello, lab!"
    assert answer["greeter"]["host"] == hosts[APP2].check_output("hostname")

    # Envoy writes its access log once a second (the unit's flush interval): wait a few for both lines.
    def both_logged():
        out = [r for r in envoy_requests(hosts[APP1], since) if r["listener"] == "outbound_greeter"]
        into = [r for r in envoy_requests(hosts[APP2], since) if r["listener"] == "inbound_greeter"]
        return (out, into) if out and into else None

    out, into = wait_for(both_logged, 10, 1, "the request in both Envoys' access logs")
    assert {r["request_id"] for r in out} & {r["request_id"] for r in into}
    assert APP1 in into[-1]["peer"] and into[-1]["code"] == 200


def test_greeter_answers_403_to_a_fleet_certificate_of_a_host_that_does_not_call_it(hosts):
    # app2's own certificate, from the fleet's CA; app2 runs no service that calls greeter.
    assert call_greeter(hosts[APP2]) == (0, "403")
    assert call_greeter(hosts[APP1]) == (0, "200")


@pytest.mark.parametrize("name", ["mon1.sevenleague.test", "logs1.sevenleague.test"])
def test_greeters_listener_is_closed_to_hosts_that_do_not_call_it(hosts, name):
    """The firewall opens the mesh port to the callers' addresses only: others do not even connect."""
    rc, _ = call_greeter(hosts[name])
    assert rc in (7, 28), rc  # connection refused or timed out, before any TLS


def test_prometheus_scrapes_every_hosts_envoy(hosts):
    deadline = time.monotonic() + 90
    while True:
        out = hosts[MONITOR].check_output("curl -sSf 'http://127.0.0.1:9090/api/v1/targets?state=active'")
        targets = json.loads(out)["data"]["activeTargets"]
        envoy = {t["labels"]["instance"]: t["health"] for t in targets if t["labels"]["job"] == "envoy"}
        if envoy == {name: "up" for name in LAB_HOSTS} or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert envoy == {name: "up" for name in LAB_HOSTS}, envoy


def test_only_the_monitoring_hosts_read_envoys_stats(hosts):
    name, address, _ = GREETER
    url = f"--resolve {name}:9902:{address} https://{name}:9902/stats/prometheus"
    assert "envoy_server_live" in hosts[MONITOR].check_output(f"curl -sf --max-time 5 {MTLS} {url}")
    # app1 calls greeter, but it is no monitoring host: its Envoy's port is closed to it.
    assert hosts[APP1].run(f"curl -s --max-time 5 {MTLS} {url}").rc in (7, 28)
