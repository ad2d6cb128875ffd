"""node_exporter after converge: metrics only over TLS, only to a client with a
certificate from the fleet's CA, the PKI's textfile metrics among them."""

import re
import shlex

import pytest
import testinfra

NAME = "sl-molecule-node-exporter"
CURRENT = "/etc/sevenleague/pki/current"
URL = f"https://{NAME}:9100/metrics"
# The certificate names the host, not localhost: reach the loopback under that name.
CURL = f"curl -sS --max-time 10 --resolve {NAME}:9100:127.0.0.1 --cacert {CURRENT}/ca.pem"
HOST_CERT = f"--cert {CURRENT}/fullchain.pem --key {CURRENT}/key.pem"


@pytest.fixture(scope="module")
def host():
    """The container itself, through podman: quicker than through Ansible."""
    return testinfra.get_host(f"podman://{NAME}")


@pytest.fixture
def other_ca(host):
    """A certificate with the host's name, from a CA the exporter does not trust."""
    host.check_output(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
        f"-subj /CN={NAME} -addext subjectAltName=DNS:{NAME} "
        "-keyout /run/sl-other-ca.key -out /run/sl-other-ca.pem 2>/dev/null"
    )
    yield "--cert /run/sl-other-ca.pem --key /run/sl-other-ca.key"
    host.run("rm -f /run/sl-other-ca.key /run/sl-other-ca.pem")


def test_the_exporter_runs_as_prometheus_with_the_key_group(host):
    assert host.service("prometheus-node-exporter").is_running
    assert "ssl-cert" in host.user("prometheus").groups
    assert host.socket("tcp://0.0.0.0:9100").is_listening


def test_the_hosts_certificate_gets_the_metrics_with_the_pki_textfile(host):
    metrics = host.check_output(f"{CURL} {HOST_CERT} {URL}")
    end = host.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)" +%s')
    value = re.search(r'^sevenleague_certificate_not_after_seconds\{name="host"\} (\S+)$', metrics, re.M)
    assert value and float(value.group(1)) == int(end)
    assert re.search(r"^node_textfile_scrape_error 0$", metrics, re.M)
    # The systemd collector, within the include/exclude bounds.
    assert 'node_systemd_unit_state{name="prometheus-node-exporter.service",state="active",type="simple"} 1' in metrics
    assert not re.search(r'node_systemd_unit_state\{name="[^"]+\.(mount|slice|scope)"', metrics)


def test_a_client_presents_its_chain_not_the_certificate_alone(host):
    """The trust bundle holds roots only: a client sends fullchain.pem (as Prometheus does)."""
    result = host.run(f"{CURL} --cert {CURRENT}/cert.pem --key {CURRENT}/key.pem {URL}")
    assert result.rc != 0 and "node_" not in result.stdout


def test_no_client_certificate_is_refused(host):
    result = host.run(f"{CURL} {URL}")
    assert result.rc != 0 and "node_" not in result.stdout


def test_a_certificate_from_another_ca_is_refused(host, other_ca):
    result = host.run(f"{CURL} {other_ca} {URL}")
    assert result.rc != 0 and "node_" not in result.stdout


def test_plain_http_gets_no_metrics(host):
    result = host.run("curl -sS --max-time 10 http://127.0.0.1:9100/metrics")
    assert "node_" not in result.stdout


def test_tls_below_1_2_is_refused(host):
    result = host.run(f"openssl s_client -connect 127.0.0.1:9100 -tls1_1 {HOST_CERT} </dev/null")
    assert result.rc != 0 and "BEGIN CERTIFICATE" not in result.stdout


# Serial of the certificate the exporter serves, while the client presents the host's real one.
SERVED = (
    "openssl s_client -connect 127.0.0.1:9100 -cert $real/fullchain.pem -key $real/key.pem </dev/null "
    "2>/dev/null | openssl x509 -noout -serial"
)
STAND_IN = "/etc/sevenleague/pki/releases/sl-molecule-stand-in"


def test_a_new_certificate_is_served_without_a_restart(host):
    """exporter-toolkit reads the certificate for each new connection: a switch of `current` (what a renewal
    does) is served at once, with no reload hook. The switch here is to a self-signed stand-in, and back."""
    script = f"""
        set -e
        link=$(readlink {CURRENT}); real=$(readlink -f {CURRENT})
        # Whatever happens, `current` points where it did.
        trap 'ln -sfn "$link" {CURRENT}; rm -rf {STAND_IN}' EXIT
        pid() {{ systemctl show -P MainPID prometheus-node-exporter; }}
        echo "pid $(pid)"
        echo "current $(openssl x509 -in $real/cert.pem -noout -serial)"
        echo "before $({SERVED})"
        install -d -m 0750 -g ssl-cert {STAND_IN}
        cp -p $real/ca.pem {STAND_IN}/
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN={NAME} \
            -keyout {STAND_IN}/key.pem -out {STAND_IN}/fullchain.pem 2>/dev/null
        chgrp ssl-cert {STAND_IN}/key.pem && chmod 0640 {STAND_IN}/key.pem
        echo "stand-in $(openssl x509 -in {STAND_IN}/fullchain.pem -noout -serial)"
        ln -sfn {STAND_IN} {CURRENT}
        echo "switched $({SERVED} || true)"
        ln -sfn "$link" {CURRENT}
        echo "back $({SERVED})"
        echo "pid $(pid)"
    """
    result = host.run(f"bash -c {shlex.quote(script)}")
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert result.rc == 0, result.stdout + result.stderr
    assert lines["before"] == lines["current"] == lines["back"]
    assert lines["switched"] == lines["stand-in"] != lines["current"]
    pids = [line for line in result.stdout.splitlines() if line.startswith("pid ")]
    assert len(set(pids)) == 1, pids


def test_the_checker_refuses_a_broken_web_config(host):
    config = "/etc/prometheus/node-exporter-web.yml"
    assert host.run(f"sevenleague-check-web-config {config}").rc == 0
    bad = host.run(
        f"sed 's/TLS12/TLS1.2/' {config} > /run/sl-bad-web.yml && "
        "sevenleague-check-web-config /run/sl-bad-web.yml; rc=$?; rm -f /run/sl-bad-web.yml; exit $rc"
    )
    assert bad.rc == 1 and "min_version" in bad.stderr
