"""frontend reaches greeter through both Envoys over mutual TLS; a caller without a certificate, with
another CA's, or not allowed by the service map is refused; a local user cannot use Envoy's admin interface,
and Envoy comes back after a clean exit; Prometheus's host scrapes the stats;
a certificate rotation of both hosts under load fails no request and Envoy serves the new serial;
a retired host's certificate is refused once the CRL arrives."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import testinfra

CALLEE, CALLER = "sl-molecule-envoy-greeter", "sl-molecule-envoy-frontend"
CURRENT = "/etc/sevenleague/pki/current"
SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[3]
# Envoy's admin interface (envoy_admin_socket), and a local user without any rights.
ADMIN = "/run/envoy/admin.sock"
AS_NOBODY = "runuser -u nobody --"
# curl with the host's own identity, the way another Envoy would call.
MTLS = f"--cert {CURRENT}/fullchain.pem --key {CURRENT}/key.pem --cacert {CURRENT}/ca.pem"


@pytest.fixture(scope="module")
def callee():
    return testinfra.get_host(f"podman://{CALLEE}")


@pytest.fixture(scope="module")
def caller():
    return testinfra.get_host(f"podman://{CALLER}")


def address(host):
    return host.check_output("hostname -I").split()[0]


def https(host, target: tuple[str, str], port: int, path: str, options: str = MTLS) -> tuple[int, str]:
    """(curl's exit code, the HTTP status) of a call from `host` to the Envoy of target (name, address)."""
    name, ip = target
    result = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {name}:{port}:{ip} "
        f"{options} https://{name}:{port}{path}"
    )
    return result.rc, result.stdout.strip()


def test_frontend_reaches_greeter_through_both_envoys(callee, caller):
    answer = json.loads(caller.check_output("curl -sf --max-time 5 'http://127.0.0.1:8080/?name=mesh'"))
    assert answer["greeter"]["greeting"] == "Hello, mesh!"
    assert answer["greeter"]["host"] == callee.check_output("hostname")

    # Both Envoys logged it, one JSON line each on their journal, under one request id, and the
    # callee's names the caller's certificate.
    def requests(host):
        lines = host.check_output("journalctl -u envoy -o cat --since -2min").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"/hello"' in line]

    # Envoy writes its access log once a second (the unit's flush interval): wait a few for both lines.
    deadline = time.monotonic() + 10
    while True:
        inbound, outbound = requests(callee), requests(caller)
        if (inbound and outbound) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert inbound and outbound
    assert inbound[-1]["code"] == 200 and inbound[-1]["listener"] == "inbound_greeter"
    assert CALLER in inbound[-1]["peer"]
    assert inbound[-1]["request_id"] in {r["request_id"] for r in outbound}
    assert not any("name=" in r["path"] for r in inbound + outbound)  # no query strings in the logs


def test_greeters_listener_refuses_a_caller_without_a_certificate(callee, caller):
    target = (CALLEE, address(callee))
    rc, code = https(caller, target, 8443, "/hello", options=f"--cacert {CURRENT}/ca.pem")
    assert rc != 0 or code in ("", "000"), (rc, code)


def test_greeters_listener_refuses_a_certificate_from_another_ca(callee, caller):
    caller.check_output(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
        f"-subj /CN={CALLER} -addext subjectAltName=DNS:{CALLER} "
        "-keyout /run/sl-other.key -out /run/sl-other.pem 2>/dev/null"
    )
    try:
        rc, code = https(
            caller,
            (CALLEE, address(callee)),
            8443,
            "/hello",
            options=f"--cert /run/sl-other.pem --key /run/sl-other.key --cacert {CURRENT}/ca.pem",
        )
    finally:
        caller.run("rm -f /run/sl-other.key /run/sl-other.pem")
    assert rc != 0 or code in ("", "000"), (rc, code)


def test_a_host_the_service_map_does_not_allow_gets_403(callee, caller):
    # The fleet's CA, but greeter's own host runs no service that calls greeter.
    assert https(callee, (CALLEE, address(callee)), 8443, "/hello") == (0, "403")
    # frontend's host does.
    assert https(caller, (CALLEE, address(callee)), 8443, "/hello") == (0, "200")


def admin(host, path: str, options: str = "") -> str:
    """GET (or what `options` say) path on the host's Envoy admin socket, as root."""
    return host.check_output(f"curl -sf --max-time 5 {options} --unix-socket {ADMIN} http://localhost{path}")


def envoy_pid(host) -> str:
    return host.check_output("systemctl show -P MainPID envoy")


def tcp_listeners(host) -> list[str]:
    """host:port of every listening TCP socket, wildcards as loopback: where a local user could connect."""
    out = []
    for line in host.check_output("ss -Hltn").splitlines():
        local = line.split()[3]
        addr, port = local.rsplit(":", 1)
        addr = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(addr, addr.split("%")[0])
        out.append(f"{addr}:{port}")
    return out


def test_a_local_user_can_neither_read_nor_drain_nor_stop_envoy(callee, caller):
    for host in (callee, caller):
        pid = envoy_pid(host)
        assert admin(host, "/ready").strip() == "LIVE"
        # The socket: 0600 in the envoy user's 0750 runtime directory, so nobody cannot even reach it.
        assert host.file(ADMIN).is_socket and host.file(ADMIN).mode == 0o600
        assert (host.file("/run/envoy").user, host.file("/run/envoy").mode) == ("envoy", 0o750)
        for path, method in (("/ready", "GET"), ("/healthcheck/fail", "POST"), ("/quitquitquit", "POST")):
            attempt = host.run(
                f"{AS_NOBODY} curl -s --max-time 5 -X {method} --unix-socket {ADMIN} http://localhost{path}"
            )
            assert attempt.rc != 0 and attempt.stdout == "", (path, attempt.rc, attempt.stdout)
        # Nor through TCP: 9901 is gone, and no listener of the host serves the admin pages.
        listeners = tcp_listeners(host)
        assert listeners and not [where for where in listeners if where.endswith(":9901")], listeners
        for where in listeners:
            info = host.run(f"{AS_NOBODY} curl -s --max-time 3 http://{where}/server_info")
            assert "command_line_options" not in info.stdout, where
            host.run(f"{AS_NOBODY} curl -s --max-time 3 -X POST http://{where}/healthcheck/fail")
            host.run(f"{AS_NOBODY} curl -s --max-time 3 -X POST http://{where}/quitquitquit")
        # Envoy did not stop, and does not fail its health checks.
        assert envoy_pid(host) == pid
        assert json.loads(admin(host, "/server_info"))["state"] == "LIVE"


def test_envoy_comes_back_after_a_clean_exit(callee, caller):
    pid = envoy_pid(callee)
    try:
        admin(callee, "/quitquitquit", options="-X POST")
        # Envoy exits 0, and the unit (Restart=always) starts it again: poll until it answers.
        deadline = time.monotonic() + 30
        while True:
            ready = callee.run(f"curl -sf --max-time 2 --unix-socket {ADMIN} http://localhost/ready")
            now = envoy_pid(callee)
            if ready.rc == 0 and ready.stdout.strip() == "LIVE" and now not in ("0", pid):
                break
            assert time.monotonic() < deadline, (callee.run("systemctl status envoy").stdout, ready.stdout)
            time.sleep(0.5)
        assert callee.service("envoy").is_running
    finally:
        # Whatever happened, leave Envoy running for the tests that follow.
        callee.run("systemctl start envoy")
        deadline = time.monotonic() + 30
        while callee.run(f"curl -sf --max-time 2 --unix-socket {ADMIN} http://localhost/ready").rc != 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    # It serves the mesh again: frontend reaches greeter once the caller's health check finds it.
    assert json.loads(admin(callee, "/server_info"))["state"] == "LIVE"
    deadline = time.monotonic() + 30
    while caller.run("curl -sf --max-time 5 'http://127.0.0.1:8080/?name=back'").rc != 0:
        assert time.monotonic() < deadline, "frontend does not reach greeter after its Envoy came back"
        time.sleep(0.5)


def test_stats_are_served_to_the_monitoring_hosts_only(callee, caller):
    target = (CALLEE, address(callee))
    text = caller.check_output(
        f"curl -sf --max-time 5 --resolve {CALLEE}:9902:{target[1]} {MTLS} https://{CALLEE}:9902/stats/prometheus"
    )
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="inbound_greeter"}' in text
    # Nothing else of the admin interface is served there.
    assert https(caller, target, 9902, "/certs") == (0, "404")
    assert https(callee, target, 9902, "/stats/prometheus") == (0, "403")


def envoy_serial(host) -> str:
    certs = json.loads(admin(host, "/certs"))
    chains = [c["serial_number"] for cert in certs["certificates"] for c in cert.get("cert_chain", [])]
    return chains[0].lower().lstrip("0")


def file_serial(host) -> str:
    return host.check_output(f"openssl x509 -noout -serial -in {CURRENT}/cert.pem").split("=")[1].lower().lstrip("0")


# Requests to frontend, one after another, until /run/sl-load.stop appears (at most 3 minutes).
LOAD = r"""
import os, time, urllib.request
end = time.monotonic() + 180
ok = bad = 0
errors = {}
while time.monotonic() < end and not os.path.exists("/run/sl-load.stop"):
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/?name=load", timeout=5) as r:
            r.read()
            ok += 1
    except Exception as exc:
        bad += 1
        errors[repr(exc)[:120]] = errors.get(repr(exc)[:120], 0) + 1
print(ok, bad, errors)
"""


def test_rotating_both_hosts_certificates_under_load_fails_no_request(callee, caller):
    before = {h: file_serial(host) for h, host in ((CALLEE, callee), (CALLER, caller))}
    caller.check_output(f"cat > /run/sl-load.py <<'EOF'\n{LOAD}\nEOF")
    caller.check_output(
        "rm -f /run/sl-load.stop && systemd-run --unit sl-load --collect "
        "-p StandardOutput=file:/run/sl-load.out python3 /run/sl-load.py"
    )
    try:
        time.sleep(2)
        run = subprocess.run(
            ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "rotate.yml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stdout[-3000:]
        time.sleep(2)
    finally:
        caller.check_output("touch /run/sl-load.stop")
        deadline = time.monotonic() + 30
        while caller.run("systemctl is-active sl-load").rc == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
    ok, bad, errors = caller.check_output("cat /run/sl-load.out").split(" ", 2)
    assert int(bad) == 0, errors
    assert int(ok) > 200, ok
    for name, host in ((CALLEE, callee), (CALLER, caller)):
        assert file_serial(host) != before[name], name
        assert envoy_serial(host) == file_serial(host), name


def test_a_retired_hosts_certificate_is_refused_once_the_crl_arrives(callee, caller):
    """playbooks/retire-host.yml revokes the caller's certificates and hands greeter's Envoy the CRL (SDS):
    the still valid certificate it accepted a moment before is refused; a new one is accepted again."""
    target = (CALLEE, address(callee))
    assert https(caller, target, 8443, "/hello") == (0, "200")
    inventory = ["-i", os.environ["MOLECULE_INVENTORY_FILE"]]
    try:
        retire = subprocess.run(
            [
                "ansible-playbook",
                *inventory,
                str(REPO / "playbooks" / "retire-host.yml"),
                "-e",
                f"retire_host={CALLER}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert retire.returncode == 0, retire.stdout[-3000:]
        assert file_serial(caller) in retire.stdout.split("Revoked:", 1)[-1]
        assert "-----BEGIN X509 CRL-----" in callee.file("/etc/sevenleague/pki/crl.pem").content_string
        # Envoy applies a renamed SDS file as soon as its watch fires; allow it 30 s.
        deadline = time.monotonic() + 30
        while https(caller, target, 8443, "/hello") == (0, "200") and time.monotonic() < deadline:
            time.sleep(0.5)
        rc, code = https(caller, target, 8443, "/hello")
        assert rc != 0 or code in ("", "000"), (rc, code)
    finally:
        restore = subprocess.run(
            ["ansible-playbook", *inventory, str(SCENARIO / "rotate.yml"), "--limit", CALLER],
            capture_output=True,
            text=True,
            check=False,
        )
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert https(caller, target, 8443, "/hello") == (0, "200")
