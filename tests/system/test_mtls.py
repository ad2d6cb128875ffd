"""Every mutual-TLS door of the lab, tried with the wrong key: no certificate,
one from another CA, an expired one from the fleet's own CA, and a valid fleet
certificate whose name the service does not accept, against Envoy, node_exporter,
the RELP listener and OpenBao; each door also lets its rightful client in, so a
refusal is the TLS layer's and not a closed port's.  Then an sslyze scan of every
TLS port on every host: TLS 1.2 and 1.3 only, Mozilla's "intermediate" suites only.

It needs the fleet on OpenBao, as site.yml converges it and as every other
file leaves it; the probes' credentials are removed from the hosts afterwards.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import LAB_HOSTS, OPENBAO, ROOT, SERVER_CA, ansible_token, lab
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

APP1, APP2 = "app1.sevenleague.test", "app2.sevenleague.test"
MONITOR, AGGREGATOR, CA_HOST = "mon1.sevenleague.test", "logs1.sevenleague.test", "ca1.sevenleague.test"
CURRENT = "/etc/sevenleague/pki/current"
# A name under the fleet's domain that is no host of the inventory: OpenBao's
# `host` role signs it (Ansible's token may), and no service may accept it.
INTRUDER = "intruder.sevenleague.test"
PROBE_DIR = "/run/sl-mtls"
CASES = ["own", "none", "other-ca", "expired", "wrong-name"]


# --- the credentials, made on the controller ----------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _sans(name: str) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    if name in LAB_HOSTS:
        sans.append(x509.IPAddress(ipaddress.ip_address(LAB_HOSTS[name])))
    return sans


def _other_ca(name: str) -> tuple[str, str, str]:
    """(key, certificate, its CA) for `name` from a CA nobody trusts."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Another CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(_sans(name)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        _pem_key(key),
        leaf.public_bytes(serialization.Encoding.PEM).decode(),
        ca.public_bytes(serialization.Encoding.PEM).decode(),
    )


def _from_openbao(name: str, ttl: str) -> tuple[str, str, str]:
    """(key, certificate, its intermediate) for `name` from the fleet's own CA, signed with
    Ansible's token through OpenBao's `host` role, as the pki role signs."""
    key = _key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(_sans(name)), critical=False)
        .sign(key, hashes.SHA256())
    )
    body = {
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "common_name": name,
        "ttl": ttl,
        "ip_sans": LAB_HOSTS.get(name, ""),
    }
    answer = subprocess.run(
        [
            "curl",
            "-sSf",
            "--cacert",
            str(SERVER_CA),
            "-H",
            f"X-Vault-Token: {ansible_token()}",
            "-X",
            "POST",
            "--data-binary",
            "@-",
            f"{OPENBAO}/v1/pki_int/sign/host",
        ],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(answer.stdout)["data"]
    return _pem_key(key), data["certificate"] + "\n", data["issuing_ca"] + "\n"


@pytest.fixture(scope="module")
def credentials(hosts):
    """Each prober gets, under PROBE_DIR/<case>/, key.pem, cert.pem, chain.pem and fullchain.pem
    (the pki role's layout); `own` is its host certificate.  The expired one lived one second."""
    probers = {APP1, MONITOR}
    made: dict[str, dict[str, tuple[str, str, str]]] = {}
    for name in probers:
        made[name] = {
            "other-ca": _other_ca(name),
            "expired": _from_openbao(name, "1s"),
            "wrong-name": _from_openbao(INTRUDER, "10m"),
        }
    time.sleep(2)
    try:
        for name in probers:
            host = hosts[name]
            host.check_output(
                f"rm -rf {PROBE_DIR} && mkdir -m 0700 {PROBE_DIR} && mkdir {PROBE_DIR}/none "
                f"&& ln -s {CURRENT} {PROBE_DIR}/own"
            )
            for case, (key, cert, chain) in made[name].items():
                files = {"key.pem": key, "cert.pem": cert, "chain.pem": chain, "fullchain.pem": cert + chain}
                host.check_output(
                    f"mkdir {PROBE_DIR}/{case} && "
                    + " && ".join(
                        f"printf '%s' {shlex.quote(text)} > {PROBE_DIR}/{case}/{file}" for file, text in files.items()
                    )
                )
            # The expired one really is: its end lies behind the host's clock.
            assert host.run(f"openssl x509 -in {PROBE_DIR}/expired/fullchain.pem -noout -checkend 0").rc == 1
        yield
    finally:
        for name in probers:
            hosts[name].run(f"rm -rf {PROBE_DIR}")


def _curl_client(case: str) -> str:
    if case == "none":
        return ""
    return f"--cert {PROBE_DIR}/{case}/fullchain.pem --key {PROBE_DIR}/{case}/key.pem"


def envoy(hosts, case: str) -> tuple[bool, str]:
    """app1, greeter's caller, to greeter's mesh listener on app2."""
    result = hosts[APP1].run(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {APP2}:8443:{LAB_HOSTS[APP2]} "
        f"--cacert {CURRENT}/ca.pem {_curl_client(case)} https://{APP2}:8443/hello"
    )
    return result.rc == 0 and result.stdout.strip() == "200", f"curl exit {result.rc}, HTTP {result.stdout}"


def node_exporter(hosts, case: str) -> tuple[bool, str]:
    """mon1, the Prometheus host, to app1's node_exporter (Debian 13's, which checks names)."""
    result = hosts[MONITOR].run(
        f"curl -sS --max-time 10 --cacert {CURRENT}/ca.pem {_curl_client(case)} https://{LAB_HOSTS[APP1]}:9100/metrics"
    )
    return result.rc == 0 and "node_exporter_build_info" in result.stdout, f"curl exit {result.rc}: {result.stderr}"


def relp(hosts, case: str) -> tuple[bool, str]:
    """app1 offers a RELP session to the aggregator; rsyslog answers only a peer it accepts."""
    data = "relp_version=0\nrelp_software=probe\ncommands=syslog"
    offer = f"1 open {len(data)} {data}\n"
    client = (
        ""
        if case == "none"
        else (
            f"-cert {PROBE_DIR}/{case}/cert.pem -cert_chain {PROBE_DIR}/{case}/chain.pem "
            f"-key {PROBE_DIR}/{case}/key.pem"
        )
    )
    result = hosts[APP1].run(
        f"printf '%s' {shlex.quote(offer)} | timeout 5 openssl s_client -quiet "
        f"-connect {LAB_HOSTS[AGGREGATOR]}:2514 -CAfile {CURRENT}/ca.pem {client}"
    )
    return "1 rsp" in result.stdout, result.stdout[-300:] + result.stderr[-300:]


def openbao(hosts, case: str) -> tuple[bool, str]:
    """app1 logs in to OpenBao with its certificate through its own login role, as its timer does."""
    result = hosts[APP1].run(
        f"curl -sS --max-time 10 --cacert /etc/sevenleague/pki/openbao-server-ca.pem {_curl_client(case)} "
        f'-X POST --data \'{{"name": "host-{APP1}"}}\' https://{LAB_HOSTS[CA_HOST]}:8200/v1/auth/cert/login'
    )
    try:
        token = json.loads(result.stdout).get("auth", {}).get("client_token")
    except ValueError:
        token = None
    if token:  # the rightful login: leave no token behind
        hosts[APP1].run(
            f"curl -s --cacert /etc/sevenleague/pki/openbao-server-ca.pem -H 'X-Vault-Token: {token}' "
            f"-X POST https://{LAB_HOSTS[CA_HOST]}:8200/v1/auth/token/revoke-self"
        )
    return bool(token), f"curl exit {result.rc}: {result.stdout[-300:]}{result.stderr[-300:]}"


SERVICES = {"envoy": envoy, "node_exporter": node_exporter, "relp": relp, "openbao": openbao}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("service", SERVICES)
def test_mutual_tls_lets_in_only_the_fleets_valid_certificate_of_an_allowed_name(hosts, credentials, service, case):
    accepted, detail = SERVICES[service](hosts, case)
    if case == "own":
        assert accepted, f"{service} refused its rightful client: {detail}"
    else:
        assert not accepted, f"{service} accepted a client with {case}: {detail}"


# --- the scan ------------------------------------------------------------------------------------

SSLYZE = ROOT / ".cache" / "sslyze" / "bin" / "sslyze"
# Mozilla's "intermediate" configuration (version 5.7), TLS 1.2 suites by their IANA names;
# TLS 1.3 has only AEAD suites.
INTERMEDIATE_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
OLD_PROTOCOLS = ["ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"]
# Ports that speak no TLS: SSH, and the apt repository's plain HTTP (its files are signed).
PLAIN = {22, 80}
# OpenBao's cluster port speaks TLS only to a peer that asks for its ALPN protocol.
ALPN_ONLY = {8201}


def listening(host) -> set[int]:
    """The host's TCP ports that listen beyond loopback."""
    ports = set()
    for line in host.check_output("ss -Hltn").splitlines():
        local = line.split()[3]
        address, port = local.rsplit(":", 1)
        if not address.startswith(("127.", "[::1]", "::1")):
            ports.add(int(port))
    return ports


PROTOCOLS = {
    "ssl_2_0_cipher_suites": "--sslv2",
    "ssl_3_0_cipher_suites": "--sslv3",
    "tls_1_0_cipher_suites": "--tlsv1",
    "tls_1_1_cipher_suites": "--tlsv1_1",
    "tls_1_2_cipher_suites": "--tlsv1_2",
    "tls_1_3_cipher_suites": "--tlsv1_3",
}
RELP = 2514


def scan(name: str, ports: set[int], protocols: list[str], client: tuple[Path, Path] | None) -> list[dict]:
    """sslyze from inside the host's own network namespace (its firewall admits loopback-like
    traffic to its own address; other hosts may not reach every port)."""
    pid = lab.podman("inspect", "-f", "{{.State.Pid}}", lab.container_name(name)).stdout.strip()
    targets = [f"{LAB_HOSTS[name]}:{port}" for port in sorted(ports)]
    auth = ["--cert", str(client[0]), "--key", str(client[1])] if client else []
    result = subprocess.run(
        ["nsenter", "-t", pid, "-n", str(SSLYZE), "--json_out=-", *auth, *(PROTOCOLS[p] for p in protocols), *targets],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [
        {"where": f"{name} port {server['server_location']['port']}", "protocols": protocols, **server}
        for server in json.loads(result.stdout)["server_scan_results"]
    ]


@pytest.fixture(scope="module")
def scans(hosts, tmp_path_factory):
    assert SSLYZE.exists(), f"{SSLYZE} is missing: `make deps` installs it"
    ports = {name: listening(host) - PLAIN - ALPN_ONLY for name, host in hosts.items()}
    jobs = [(name, found - {RELP}, list(PROTOCOLS), None) for name, found in ports.items() if found - {RELP}]
    # The RELP listener closes on a client without a certificate before sslyze sees a suite:
    # it is scanned as the aggregator itself (an allowed peer), with its own key.  Not for
    # SSL 2.0: sslyze's SSL 2.0 client cannot load an EC key, and GnuTLS (rsyslog's TLS) has
    # no SSL 2.0 at all.
    folder = tmp_path_factory.mktemp("sslyze")
    cert, key = folder / "fullchain.pem", folder / "key.pem"
    aggregator = hosts[AGGREGATOR]
    cert.write_text(aggregator.file(f"{CURRENT}/fullchain.pem").content_string)
    key.write_text(aggregator.check_output(f"cat {CURRENT}/key.pem") + "\n")
    key.chmod(0o600)
    jobs.append((AGGREGATOR, {RELP}, [p for p in PROTOCOLS if p != "ssl_2_0_cipher_suites"], (cert, key)))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = [pool.submit(scan, *job) for job in jobs]
        return ports, [server for future in results for server in future.result()]


def test_the_scan_found_the_fleets_tls_ports(scans):
    ports = scans[0]
    assert 2514 in ports[AGGREGATOR] and 8200 in ports[CA_HOST]
    # node_exporter and Envoy's stats listener everywhere, greeter's mesh listener on app2.
    assert all({9100, 9902} <= found for found in ports.values()) and 8443 in ports[APP2]


def test_every_tls_port_offers_only_tls_1_2_and_1_3_with_intermediate_suites(scans):
    weak = []
    for server in scans[1]:
        where = server["where"]
        if server["scan_status"] != "COMPLETED":
            weak.append(f"{where}: not scanned ({server.get('connectivity_error_trace')})")
            continue
        accepted = {}
        for protocol in server["protocols"]:
            attempt = server["scan_result"][protocol]
            if attempt["status"] != "COMPLETED":
                weak.append(
                    f"{where}: {protocol} not scanned: {attempt.get('error_reason')} "
                    f"{(attempt.get('error_trace') or '')[-300:]}"
                )
                continue
            accepted[protocol] = {
                suite["cipher_suite"]["name"] for suite in attempt["result"]["accepted_cipher_suites"]
            }
        for protocol in OLD_PROTOCOLS:
            if accepted.get(protocol):
                weak.append(f"{where}: {protocol} accepts {sorted(accepted[protocol])}")
        tls12 = accepted.get("tls_1_2_cipher_suites", set())
        if tls12 - INTERMEDIATE_TLS12:
            weak.append(f"{where}: TLS 1.2 suites outside Mozilla intermediate: {sorted(tls12 - INTERMEDIATE_TLS12)}")
        if not tls12 and not accepted.get("tls_1_3_cipher_suites"):
            weak.append(f"{where}: no TLS 1.2 or 1.3 suite accepted at all")
    assert not weak, "\n".join(weak)


def test_openbaos_cluster_port_speaks_only_tls_1_2_and_1_3(hosts):
    """The cluster port answers only its own ALPN protocol, which sslyze does not send."""
    ca = hosts[CA_HOST]
    address = LAB_HOSTS[CA_HOST]
    old = ca.run(f"openssl s_client -connect {address}:8201 -alpn req_fw_sb-act_v1 -tls1_1 </dev/null")
    new = ca.run(f"openssl s_client -connect {address}:8201 -alpn req_fw_sb-act_v1 -tls1_2 </dev/null")
    assert old.rc != 0 and "BEGIN CERTIFICATE" not in old.stdout
    assert "BEGIN CERTIFICATE" in new.stdout, new.stdout[-500:] + new.stderr[-500:]
