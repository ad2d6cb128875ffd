"""The host's certificate tool (sevenleague_host.pki, the sevenleague-pki command) against a real OpenBao.

OpenBao runs in dev mode with TLS, because cert auth needs it: a root CA at pki_root, the
issuing intermediate at pki_int, a PKI role per host and cert auth trusting the root, as the
openbao role sets them up. Each test gets a host directory with a first release issued through
the root token, as the pki role would install it, and runs the tool: `renew` as the timer does
(under systemd, so every log line carries its journal priority), and `status`, `request`,
`install` and `publish` as the pki role does from the controller.

The renewal fraction is fixed at a third of the lifetime. A certificate that is due already is
issued through an extra PKI role, due-<host>, that backdates by an hour: a 90 s certificate
then has about 2% of its lifetime left. The renewal itself signs with the host's normal role.
"""

import datetime
import grp
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The command as the package installs it runs `sevenleague_host.pki.cli:run`; here from the checkout.
TOOL_PATH = os.pathsep.join(str(ROOT / folder) for folder in ("collections", "packaging/sevenleague-host"))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from openbao_dev import dev_server, free_port

from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from sevenleague_host.pki import common, renew, store
from sevenleague_host.pki import config as tool_config

UTC = datetime.UTC
DOMAIN = "sevenleague.test"
HOST = f"app1.{DOMAIN}"
HOST_IP = "10.213.7.21"
NAME = "app1"  # the certificate's name: the fact's and the metrics' label
ROLE = f"renew-{HOST}"
DUE_ROLE = f"due-{HOST}"  # backdates by an hour: a 90 s certificate from it is due at once
SHORT_ROLE = "renew-short"  # max_ttl 1h: below the tool's ttl of a day
FIRST_RELEASE = "20200101T000000Z"
SEALED = "is sealed: unseal it (see roles/openbao/README.md)"
JOURNAL_PREFIXES = ("<3>", "<4>", "<6>")
PLAIN_PREFIXES = ("sevenleague-pki: error: ", "sevenleague-pki: warning: ", "sevenleague-pki: info: ")


# --- a real OpenBao with TLS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("openbao"), tls=True) as server:
        client = server["client"]
        client.sys.enable_secrets_engine("pki", path="pki_root", config={"max_lease_ttl": "72h"})
        root = client.write(
            "pki_root/root/generate/internal", common_name="sevenleague test root", key_type="ec", ttl="72h"
        )["data"]["certificate"]
        client.sys.enable_secrets_engine("pki", path="pki_int", config={"max_lease_ttl": "48h"})
        csr = client.write(
            "pki_int/intermediate/generate/internal", common_name="sevenleague test intermediate", key_type="ec"
        )["data"]["csr"]
        intermediate = client.write("pki_root/root/sign-intermediate", csr=csr, format="pem", ttl="48h")["data"][
            "certificate"
        ]
        client.write("pki_int/intermediate/set-signed", certificate=f"{intermediate}\n{root}")
        role = {
            "allowed_domains": [HOST],
            "allow_bare_domains": True,
            "allow_subdomains": False,
            "allow_ip_sans": True,
            "use_csr_common_name": False,
            "use_csr_sans": False,
            "key_type": "ec",
            "max_ttl": "24h",
            "not_before_duration": "30s",
        }  # a 90 s certificate then lives 120 s: 75% left
        client.write(f"pki_int/roles/{ROLE}", **role)
        client.write(f"pki_int/roles/{SHORT_ROLE}", **{**role, "max_ttl": "1h"})
        # Only the root token issues through this one: 90 s after an hour's backdating is 2% left.
        client.write(f"pki_int/roles/{DUE_ROLE}", **{**role, "not_before_duration": "3600s"})
        client.sys.create_or_update_policy(
            "pki-renew",
            'path "pki_int/sign/renew-*" { capabilities = ["update"] }\n'
            'path "pki_int/revoke-with-key" { capabilities = ["update"] }',
        )
        client.sys.enable_auth_method("cert", path="cert")
        client.write("auth/cert/certs/host", certificate=root, token_policies=["pki-renew"], token_ttl="5m")
        yield {**server, "root": root.strip() + "\n", "intermediate": intermediate.strip() + "\n"}


# --- certificates -----------------------------------------------------------------------------


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def csr_for(key, names=(HOST, HOST_IP)) -> str:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .add_extension(x509.SubjectAlternativeName(pki.parse_sans(list(names))), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def sign_csr(bao, csr: str, ttl: int, role: str = ROLE, ip_sans: str = HOST_IP) -> dict:
    """OpenBao's answer through the root token, as the controller gets it."""
    return bao["client"].write(
        f"pki_int/sign/{role}", csr=csr, common_name=HOST, ip_sans=ip_sans, ttl=f"{ttl}s", format="pem"
    )["data"]


def issue(bao, ttl: int, key=None, role: str = ROLE) -> dict:
    """A certificate for HOST through the root token, as the controller's first run issues it."""
    key = key or new_key()
    data = sign_csr(bao, csr_for(key), ttl, role)
    return {"key": key, "cert": data["certificate"].strip() + "\n", "chain": data["issuing_ca"].strip() + "\n"}


def local_ca(name: str):
    """A CA OpenBao knows nothing about: (key, certificate)."""
    key, now = new_key(), datetime.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def local_leaf(ca, not_before: datetime.datetime, not_after: datetime.datetime) -> dict:
    ca_key, ca_cert = ca
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(pki.parse_sans([HOST, HOST_IP])), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return {"key": key, "cert": cert.public_bytes(serialization.Encoding.PEM).decode(), "chain": ""}


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def other_group() -> grp.struct_group:
    """A group other than our primary one, so that the test sees the tool set key_group."""
    mine = os.getegid()
    candidates = grp.getgrall() if os.geteuid() == 0 else [grp.getgrgid(gid) for gid in os.getgroups()]
    return next((group for group in candidates if group.gr_gid != mine), grp.getgrgid(mine))


# --- a host -----------------------------------------------------------------------------------


class Host:
    """A host's PKI directory as the pki role leaves it, plus the tool's config, hooks and fact."""

    def __init__(self, tmp: Path, bao: dict):
        self.tmp, self.bao = tmp, bao
        self.base = tmp / "pki"
        self.releases = self.base / "releases"
        self.current = self.base / "current"
        self.pending = self.base / "pending"
        self.config_path = tmp / f"{NAME}.json"
        self.metrics = tmp / "textfile" / "sevenleague_pki.prom"
        self.fact = tmp / "facts.d" / f"{NAME}.fact"
        self.hooks = tmp / "hooks.d"
        self.hook_log = tmp / "hook-ran"
        self.group = other_group()
        self.releases.mkdir(parents=True)
        self.hooks.mkdir()
        self.fact.parent.mkdir()

    def install(self, issued: dict, ca_pem: str, name: str = FIRST_RELEASE) -> None:
        """The first release, and a fact from before the tool wrote it (stale: no name, unsorted SANs)."""
        release = self.releases / name
        release.mkdir(mode=0o750)
        (release / "key.pem").write_bytes(key_pem(issued["key"]))
        (release / "key.pem").chmod(0o640)
        for file, content in (
            ("cert.pem", issued["cert"]),
            ("chain.pem", issued["chain"]),
            ("fullchain.pem", issued["cert"] + issued["chain"]),
            ("ca.pem", ca_pem),
        ):
            (release / file).write_text(content)
        self.current.symlink_to(f"releases/{name}")
        info = pki.cert_info(issued["cert"])
        self.fact.write_text(
            json.dumps(
                {
                    "backend": "openbao",
                    "dir": str(self.current),
                    "cert": f"{self.current}/cert.pem",
                    "key": f"{self.current}/key.pem",
                    "chain": f"{self.current}/chain.pem",
                    "fullchain": f"{self.current}/fullchain.pem",
                    "ca": f"{self.current}/ca.pem",
                    "key_group": self.group.gr_name,
                    "sans": [HOST, HOST_IP],
                    "serial": info["serial"],
                    "not_after": info["not_after"],
                },
                indent=4,
                sort_keys=True,
            )
            + "\n"
        )

    def configure(self, **overrides) -> dict:
        """The config as the pki role writes it; keys of the openbao object may be overridden at the top."""
        openbao = {
            "url": self.bao["url"],
            "server_ca": self.bao["ca"],
            "auth_mount": "cert",
            "auth_role": "host",
            "pki_mount": "pki_int",
            "pki_role": ROLE,
            "attempts": 2,
            "backoff_initial": 0.1,
            "backoff_max": 0.2,
        }
        config = {
            "name": NAME,
            "backend": "openbao",
            "base_dir": str(self.base),
            "common_name": HOST,
            "alt_names": [],
            "ip_sans": [HOST_IP],
            "ttl": 86400,
            "key_curve": "secp256r1",
            "key_group": self.group.gr_name,
            "keep_releases": 3,
            "textfile": str(self.metrics),
            "fact_file": str(self.fact),
            "hooks_dir": str(self.hooks),
        }
        for key, value in overrides.items():
            (openbao if key in tool_config.BAO_KEYS else config)[key] = value
        config.setdefault("openbao", openbao)
        self.config_path.write_text(json.dumps(config))
        return config

    def hook(self, name: str, body: str, executable: bool = True) -> None:
        path = self.hooks / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755 if executable else 0o644)

    def record_hook(self, name: str = "50-record") -> None:
        """A hook that appends what the reload contract hands it, one line per run."""
        contract = "$SEVENLEAGUE_PKI_NAME $SEVENLEAGUE_PKI_DIR $SEVENLEAGUE_PKI_SERIAL"
        self.hook(name, f'echo "{contract}" >> "{self.hook_log}"')

    def hook_runs(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def tool(self, *args: str, stdin: dict | str | None = None, journal: bool = False) -> subprocess.CompletedProcess:
        """The tool as systemd (journal) or the pki role runs it; one JSON object on stdout, every time."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": TOOL_PATH, "PYTHONDONTWRITEBYTECODE": "1"}
        if journal:
            env["JOURNAL_STREAM"] = "1"
        proc = subprocess.run(
            [sys.executable, "-m", "sevenleague_host.pki", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin if isinstance(stdin, str) else json.dumps(stdin) if stdin is not None else "",
        )
        # journald reads the priority from each line's prefix: every line must carry one.
        prefixes = JOURNAL_PREFIXES if journal else PLAIN_PREFIXES
        assert all(line.startswith(prefixes) for line in proc.stderr.splitlines()), proc.stderr
        assert "PRIVATE KEY" not in proc.stderr + proc.stdout
        assert len(proc.stdout.splitlines()) == 1, proc.stdout
        proc.result = json.loads(proc.stdout)
        # Exit status 1 exactly when the command failed, or a step after a switch did.
        assert proc.returncode == (1 if proc.result.get("failed") or proc.result.get("problems") else 0), proc.stdout
        return proc

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """`renew`, as the timer's unit runs it."""
        return self.tool("renew", "--config", str(self.config_path), *args, journal=True)

    def command(self, name: str, *args: str, stdin: dict | str | None = None) -> subprocess.CompletedProcess:
        """A command as the pki role runs it over SSH (no journal)."""
        return self.tool(name, "--config", str(self.config_path), *args, stdin=stdin)

    def target(self) -> str:
        return os.readlink(self.current)

    def release_names(self) -> list[str]:
        return sorted(path.name for path in self.releases.iterdir())

    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.current / "cert.pem").read_bytes())

    def snapshot(self) -> dict:
        """Everything a failed run must leave as it was."""
        files = {
            str(path.relative_to(self.base)): path.read_bytes()
            for path in sorted(self.base.rglob("*"))
            if path.is_file() and not path.is_symlink() and path.name != ".lock"
        }
        return {
            "target": self.target(),
            "releases": self.release_names(),
            "files": files,
            "fact": self.fact.read_text(),
            "metrics": self.metrics.read_text() if self.metrics.exists() else None,
        }


@pytest.fixture
def host(tmp_path, bao):
    return Host(tmp_path, bao)


def installed(host: Host, lifetime: int, due: bool = False, **config) -> dict:
    """The host with a certificate of `lifetime` seconds from OpenBao, configured; returns it.
    `due` issues it through DUE_ROLE, so that it is past two thirds of its lifetime already."""
    issued = issue(host.bao, lifetime, role=DUE_ROLE if due else ROLE)
    host.install(issued, host.bao["root"])
    host.configure(**config)
    return issued


def serial_of(cert_pem: str) -> str:
    return pki.cert_info(cert_pem)["serial"]


def expected_fact(host: Host, info: dict) -> dict:
    current = str(host.current)
    return {
        "backend": "openbao",
        "name": NAME,
        "base_dir": str(host.base),
        "hooks_dir": str(host.hooks),
        "dir": current,
        "cert": f"{current}/cert.pem",
        "key": f"{current}/key.pem",
        "chain": f"{current}/chain.pem",
        "fullchain": f"{current}/fullchain.pem",
        "ca": f"{current}/ca.pem",
        "key_group": host.group.gr_name,
        "sans": sorted([HOST, HOST_IP]),
        "serial": info["serial"],
        "not_after": info["not_after"],
    }


# --- nothing to do ----------------------------------------------------------------------------


def test_a_timer_run_with_nothing_to_renew_brings_the_metrics_up_to_date(host):
    """The metrics (and their clock check) are as of the last timer run, not the last renewal."""
    issued = installed(host, 86400)
    host.metrics.unlink(missing_ok=True)
    proc = host.run()
    assert proc.returncode == 0, proc.stderr
    assert proc.result["renew"] is False
    assert host.metrics.read_text() == pki.textfile_metrics([(NAME, pki.cert_info(issued["cert"]))])


def test_the_crl_comes_from_openbao_and_its_hooks_run_when_it_changes(host):
    installed(host, 86400)
    (host.hooks / "crl.d").mkdir()
    (host.hooks / "crl.d" / "70-record").write_text(f'#!/bin/sh\necho crl >> "{host.hook_log}"\n')
    (host.hooks / "crl.d" / "70-record").chmod(0o755)
    first = host.command("crl")
    assert first.returncode == 0, first.stderr
    assert first.result["changed"] and first.result["crls"] == 1
    crl = x509.load_pem_x509_crl((host.base / "crl.pem").read_bytes())
    assert crl.next_update_utc > datetime.datetime.now(datetime.UTC)
    assert host.hook_runs() == ["crl"]
    again = host.command("crl")
    assert not again.result["changed"] and host.hook_runs() == ["crl"]


def test_an_expired_crl_is_refused_and_the_one_in_place_stays(host):
    installed(host, 86400)
    assert host.command("crl").returncode == 0
    before = (host.base / "crl.pem").read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .last_update(now - datetime.timedelta(days=8))
        .next_update(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    proc = host.command("crl", "--stdin", stdin=expired)
    assert proc.returncode == 1 and "expired" in proc.result["msg"]
    assert (host.base / "crl.pem").read_bytes() == before


def test_a_valid_certificate_is_left_alone(host):
    issued = installed(host, 86400)
    assert host.command("publish").returncode == 0
    host.record_hook()
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 0, proc.stderr
    info = pki.cert_info(issued["cert"])
    assert f"<6>certificate {info['serial']} valid until {info['not_after']}; valid: renews after" in proc.stderr
    assert proc.result == {
        "changed": False,
        "renew": False,
        "reason": proc.result["reason"],
        "serial": info["serial"],
        "not_after": info["not_after"],
    }
    after = host.snapshot()
    # The timer brought the issuer's CRL (OpenBao's, unauthenticated) next to the releases.
    assert after["files"].pop("crl.pem").startswith(b"-----BEGIN X509 CRL-----")
    assert after == before
    assert host.hook_runs() == []


def test_check_prints_the_decision_and_changes_nothing(host, tmp_path):
    issued = installed(host, 90, due=True)
    before = host.snapshot()
    proc = host.run("--check")
    assert proc.returncode == 0, proc.stderr
    decision = proc.result
    info = pki.cert_info(issued["cert"])
    assert decision["renew"] is True and "% of the lifetime left (renew below 33%)" in decision["reason"]
    assert int(decision["reason"].split("%")[0]) <= 3
    assert (decision["serial"], decision["not_after"]) == (info["serial"], info["not_after"])
    assert decision["changed"] is False
    assert host.snapshot() == before

    # From the normal role, a 90 s certificate lives 120 s: 75% alive, not due.
    (tmp_path / "fresh").mkdir()
    other = Host(tmp_path / "fresh", host.bao)
    installed(other, 90)
    fresh = other.snapshot()
    decision = other.run("--check").result
    assert decision["renew"] is False and decision["reason"].startswith("valid: renews after")
    forced = other.run("--check", "--force").result
    assert forced["renew"] is True and forced["reason"].startswith("forced; otherwise valid: renews after")
    assert other.snapshot() == fresh


# --- renewing ---------------------------------------------------------------------------------


def test_a_due_certificate_is_renewed_with_a_new_key(host):
    issued = installed(host, 90, due=True, keep_releases=1)
    # An older release, left from before: keep_releases=1 keeps only the previous one besides the new.
    (host.releases / "20190101T000000Z").mkdir()
    host.record_hook()
    host.hook("60-disabled", f'echo ran > "{host.tmp / "disabled-ran"}"', executable=False)
    old_ca = (host.current / "ca.pem").read_bytes()
    started = datetime.datetime.now(UTC)

    proc = host.run()

    assert proc.returncode == 0, proc.stderr
    assert host.target() != f"releases/{FIRST_RELEASE}" and host.target().startswith("releases/")
    assert host.release_names() == sorted([FIRST_RELEASE, os.path.basename(host.target())])
    assert not (host.base / "current.new").exists() and not host.pending.exists()
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
    # Signed with the normal role: backdated by its 30 s, not by the due role's hour.
    assert pki.not_before(cert) > started - datetime.timedelta(minutes=5)
    # The files, as the pki role writes them: the chain without the root, the trust bundle unchanged.
    assert (release / "chain.pem").read_text() == host.bao["intermediate"]
    assert (release / "fullchain.pem").read_text() == new_pem + host.bao["intermediate"]
    assert (release / "ca.pem").read_bytes() == old_ca
    intermediates = [x509.load_pem_x509_certificate((release / "chain.pem").read_bytes())]
    verifier = (
        PolicyBuilder().store(Store([x509.load_pem_x509_certificate(old_ca)])).build_server_verifier(x509.DNSName(HOST))
    )
    assert verifier.verify(cert, intermediates)
    assert stat.S_IMODE(release.stat().st_mode) == 0o750 and release.stat().st_gid == host.group.gr_gid
    assert stat.S_IMODE((release / "key.pem").stat().st_mode) == 0o640
    assert (release / "key.pem").stat().st_gid == host.group.gr_gid
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem"):
        assert stat.S_IMODE((release / name).stat().st_mode) == 0o644, name
    # Monitoring, the fact and the hooks follow the new certificate.
    assert host.metrics.read_text() == pki.textfile_metrics([(NAME, info)])
    assert stat.S_IMODE(host.metrics.stat().st_mode) == 0o644
    assert [path.name for path in host.metrics.parent.iterdir()] == [host.metrics.name]
    assert json.loads(host.fact.read_text()) == expected_fact(host, info)
    assert host.hook_runs() == [f"{NAME} {host.current} {info['serial']}"]
    assert not (host.tmp / "disabled-ran").exists()
    assert f"<6>renewing certificate {serial_of(issued['cert'])}" in proc.stderr
    assert (
        f"<6>switched {host.current} to {host.target()}: certificate {info['serial']} valid until "
        f"{info['not_after']}" in proc.stderr
    )
    assert "<6>removed old release 20190101T000000Z" in proc.stderr
    assert proc.result == {
        "changed": True,
        "serial": info["serial"],
        "not_after": info["not_after"],
        "release": release.name,
        "problems": [],
        "revoked": [FIRST_RELEASE],
    }

    # Once renewed, the next timer run has nothing to do.
    again = host.run()
    assert again.returncode == 0 and f"certificate {info['serial']} valid until" in again.stderr
    assert again.result["changed"] is False and again.result["renew"] is False
    assert host.target() == f"releases/{release.name}"
    assert len(host.hook_runs()) == 1


def crl_serials(bao) -> set[int]:
    import requests

    crl = x509.load_pem_x509_crl(requests.get(f"{bao['url']}/v1/pki_int/crl/pem", verify=bao["ca"], timeout=10).content)
    return {revoked.serial_number for revoked in crl}


def test_a_replaced_key_s_certificate_is_revoked_with_that_key(host):
    issued = installed(host, 86400)
    old = x509.load_pem_x509_certificate(issued["cert"].encode()).serial_number
    assert old not in crl_serials(host.bao)
    proc = host.run("--force")
    assert proc.returncode == 0, proc.stderr
    assert proc.result["revoked"] == [FIRST_RELEASE]
    assert old in crl_serials(host.bao)
    assert (host.releases / FIRST_RELEASE / "revoked").read_text() == "revoked\n"
    assert f"<6>revoked the certificate of release {FIRST_RELEASE}, whose key was replaced" in proc.stderr
    # Done once: the next run has nothing left to revoke, and does not log in for it.
    again = host.run()
    assert "revoked" not in again.result and "revoked the certificate" not in again.stderr


def test_a_revocation_openbao_cannot_take_now_is_retried_at_the_next_run(host):
    issued = installed(host, 86400)
    policies = host.bao["client"].sys
    renew_only = 'path "pki_int/sign/renew-*" { capabilities = ["update"] }'
    full = policies.read_policy("pki-renew")["data"]["rules"]
    policies.create_or_update_policy("pki-renew", renew_only)
    try:
        proc = host.run("--force")
    finally:
        policies.create_or_update_policy("pki-renew", full)
    # Renewed, but the old certificate could not be revoked: said, and not marked done.
    assert proc.returncode == 0 and "revoked" not in proc.result
    assert f"<4>OpenBao denied revoking release {FIRST_RELEASE}" in proc.stderr
    assert not (host.releases / FIRST_RELEASE / "revoked").exists()
    # The next timer run, with nothing to renew, revokes it.
    again = host.run()
    assert again.result["changed"] is False and again.result["revoked"] == [FIRST_RELEASE]
    assert x509.load_pem_x509_certificate(issued["cert"].encode()).serial_number in crl_serials(host.bao)


def test_a_certificate_from_another_issuer_is_not_sent_for_revocation(host):
    ca = local_ca("another CA")
    now = datetime.datetime.now(UTC)
    host.install(
        local_leaf(ca, now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=300)),
        host.bao["root"],
        name="20190101T000000Z",
    )
    (host.current).unlink()
    host.install(issue(host.bao, 86400), host.bao["root"])
    host.configure()
    proc = host.run("--force")
    assert proc.returncode == 0, proc.stderr
    assert proc.result["revoked"] == [FIRST_RELEASE]
    assert not (host.releases / "20190101T000000Z" / "revoked").exists()


def test_force_renews_a_valid_certificate(host):
    issued = installed(host, 86400)
    proc = host.run("--force")
    assert proc.returncode == 0, proc.stderr
    assert "forced; otherwise valid: renews after" in proc.stderr
    assert host.target() != f"releases/{FIRST_RELEASE}"
    assert serial_of((host.current / "cert.pem").read_text()) != serial_of(issued["cert"])
    assert len(host.release_names()) == 2


def test_a_failing_hook_keeps_the_new_certificate_and_fails_the_run(host):
    installed(host, 90, due=True)
    host.hook("10-fail", "exit 3")
    host.record_hook("20-record")
    proc = host.run()
    assert proc.returncode == 1
    serial = pki.cert_info((host.current / "cert.pem").read_text())["serial"]
    assert host.target() != f"releases/{FIRST_RELEASE}"
    assert (
        f"<3>hook {host.hooks / '10-fail'} failed with exit code 3; certificate {serial} stays in place" in proc.stderr
    )
    assert f"<3>1 reload hook(s) in {host.hooks} failed" in proc.stderr
    assert host.hook_runs() == [f"{NAME} {host.current} {serial}"]  # the later hook still ran
    assert proc.result["changed"] is True and proc.result["serial"] == serial
    assert proc.result["problems"] == [f"1 reload hook(s) in {host.hooks} failed (see the messages above)"]


# --- failures leave `current` alone -----------------------------------------------------------


def test_unreachable_openbao_is_retried_then_given_up(host):
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    installed(host, 90, due=True, url=url, attempts=2)
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert (
        f"cannot read the issuing CA of pki_int, deciding from the lifetime alone: cannot reach OpenBao at {url}"
        in proc.stderr
    )
    assert proc.stderr.count("<4>") == 2  # the issuer, then attempt 1 of 2
    assert f"<4>attempt 1/2 failed: cannot reach OpenBao at {url}" in proc.stderr
    # A refused port may be a sealed OpenBao (its port closes until it is unsealed): the message says so.
    assert "Connection refused (OpenBao is stopped, or sealed" in proc.stderr
    assert "README.md)); retrying in" in proc.stderr
    assert f"<3>no new certificate after 2 attempts: cannot reach OpenBao at {url}" in proc.stderr
    assert proc.result["failed"] is True and proc.result["msg"].startswith("no new certificate after 2 attempts")
    assert host.snapshot() == before
    assert not host.pending.exists()


def test_a_sealed_openbao_is_named_and_retried(host, tmp_path):
    installed(host, 90, due=True)
    (tmp_path / "sealed").mkdir()
    with dev_server(tmp_path / "sealed", tls=True) as sealed:
        sealed["client"].sys.seal()
        host.configure(url=sealed["url"], server_ca=sealed["ca"], attempts=2)
        before = host.snapshot()
        proc = host.run()
    assert proc.returncode == 1
    assert f"<4>attempt 1/2 failed: OpenBao at {sealed['url']} {SEALED}" in proc.stderr
    assert f"<3>no new certificate after 2 attempts: OpenBao at {sealed['url']} {SEALED}" in proc.stderr
    assert host.snapshot() == before


@pytest.mark.parametrize("case", ["foreign-certificate", "missing-auth-role"])
def test_a_refused_login_is_named_and_not_retried(host, case):
    if case == "foreign-certificate":
        ca = local_ca("not the fleet's CA")
        now = datetime.datetime.now(UTC)
        host.install(local_leaf(ca, now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=20)), pem(ca[1]))
        host.configure(attempts=3)
        auth_role = "host"
    else:
        installed(host, 90, due=True, attempts=3, auth_role="nope")
        auth_role = "nope"
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert (
        f"<3>no new certificate: OpenBao refused the login: the certificate is not trusted by "
        f"auth/cert role {auth_role}" in proc.stderr
    )
    assert "attempt 1/" not in proc.stderr
    assert host.snapshot() == before


def test_a_name_the_pki_role_refuses_is_named(host, bao):
    other = f"other.{DOMAIN}"
    issued = installed(host, 86400, common_name=other)  # the names changed: due at once
    before = host.snapshot()
    serials = set(bao["client"].secrets.pki.list_certificates(mount_point="pki_int")["data"]["keys"])
    proc = host.run()
    assert proc.returncode == 1
    assert (
        f"renewing certificate {serial_of(issued['cert'])}" in proc.stderr
        and f"SANs differ: missing {other}" in proc.stderr
    )
    assert (
        f"OpenBao refused to sign: common name {other} not allowed by this role (role {ROLE} at pki_int)" in proc.stderr
    )
    assert "attempt 1/" not in proc.stderr
    assert host.snapshot() == before
    assert not host.pending.exists()
    assert set(bao["client"].secrets.pki.list_certificates(mount_point="pki_int")["data"]["keys"]) == serials


def test_a_ttl_shortened_by_the_roles_max_ttl_is_refused(host):
    installed(host, 90, due=True, pki_role=SHORT_ROLE, ttl=7200)
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    message = next(line for line in proc.stderr.splitlines() if line.startswith("<3>"))
    assert message.startswith("<3>no new certificate: the CA shortened certificate ")
    assert "earlier than ttl 7200 s asks" in message and "the CA role's max_ttl" in message
    assert "lower the ttl or raise that maximum" in message
    serial = message.split("the CA shortened certificate ")[1].split(":")[0]
    assert len(serial) >= 16 and int(serial, 16)
    assert f"refusing certificate {serial}" in message
    assert "attempt 1/" not in proc.stderr
    assert host.snapshot() == before
    assert not host.pending.exists()


def test_a_trust_bundle_without_the_new_issuers_root_is_refused(host):
    issued = issue(host.bao, 86400)
    host.install(issued, pem(local_ca("an old root")[1]))  # ca.pem lacks OpenBao's root
    host.configure()
    before = host.snapshot()
    proc = host.run("--force")
    assert proc.returncode == 1
    assert "the trust bundle lacks the root of the new issuer" in proc.stderr
    assert "CN=sevenleague test root" in proc.stderr and "run site.yml" in proc.stderr
    assert host.snapshot() == before


@pytest.mark.parametrize("case", ["expired", "missing"])
def test_a_host_without_a_usable_certificate_is_sent_to_the_playbook(host, case):
    if case == "expired":
        ca = local_ca("sevenleague test root")
        now = datetime.datetime.now(UTC)
        issued = local_leaf(ca, now - datetime.timedelta(days=2), now - datetime.timedelta(days=1))
        host.install(issued, pem(ca[1]))
        expected = (
            f"the current certificate {serial_of(issued['cert'])} expired at "
            f"{pki.cert_info(issued['cert'])['not_after']}"
        )
    else:
        host.releases.joinpath(FIRST_RELEASE).mkdir()
        host.current.symlink_to(f"releases/{FIRST_RELEASE}")
        host.fact.write_text("{}\n")
        expected = f"no current certificate ({host.current}/cert.pem does not exist)"
    host.configure(attempts=3)
    before = host.snapshot()
    proc = host.run("--force")
    assert proc.returncode == 1
    assert f"<3>{expected}" in proc.stderr
    assert f"re-issue it from the controller with `ansible-playbook playbooks/pki.yml --limit {HOST}`" in proc.stderr
    assert "attempt" not in proc.stderr
    assert host.snapshot() == before


def test_a_bad_config_is_named_before_anything_happens(host):
    # renew_fraction was a knob once: the fraction is the policy's now, and the key is unknown.
    installed(host, 90, due=True, ttl=30, url="http://127.0.0.1:1", alt_names=[HOST_IP], renew_fraction=0.99)
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert f"<3>the config {host.config_path} is invalid: unknown key 'renew_fraction'" in proc.stderr
    config = json.loads(host.config_path.read_text())
    del config["renew_fraction"]
    host.config_path.write_text(json.dumps(config))
    proc = host.run()
    assert proc.returncode == 1
    for problem in (
        "openbao.url must be an https:// URL",
        "alt_names must be a list of DNS names",
        "ttl must be whole seconds, at least 60",
    ):
        assert problem in proc.stderr
    assert host.snapshot() == before


def test_a_certificate_of_the_builtin_ca_is_not_renewed_by_the_timer(host, bao):
    installed(host, 90, due=True, backend="builtin", openbao=None)
    before = host.snapshot()
    proc = host.run()
    assert proc.returncode == 1
    assert f"<3>{NAME} is issued by the builtin CA, which only the controller reaches" in proc.stderr
    assert host.snapshot() == before


# --- the controller's path: status, request, install, publish ----------------------------------


def test_check_config_names_an_unknown_and_a_missing_key(host):
    config = host.configure()
    proc = host.tool("check-config", str(host.config_path))
    assert proc.returncode == 0 and proc.result == {"changed": False}, proc.stderr

    host.config_path.write_text(json.dumps({**config, "colour": "blue"}))
    proc = host.tool("check-config", str(host.config_path))
    assert proc.returncode == 1
    message = f"the config {host.config_path} is invalid: unknown key 'colour'"
    assert proc.stderr == f"sevenleague-pki: error: {message}\n"
    assert proc.result == {"failed": True, "msg": message}

    host.config_path.write_text(json.dumps({key: value for key, value in config.items() if key != "ttl"}))
    proc = host.tool("check-config", str(host.config_path))
    assert proc.returncode == 1 and proc.result["msg"] == f"the config {host.config_path} is invalid: ttl is required"

    openbao = {key: value for key, value in config["openbao"].items() if key != "pki_role"}
    host.config_path.write_text(json.dumps({**config, "openbao": {**openbao, "token": "x"}}))
    proc = host.tool("check-config", str(host.config_path))
    assert proc.returncode == 1
    assert (
        proc.result["msg"] == f"the config {host.config_path} is invalid: unknown key openbao.token; "
        f"openbao.pki_role is required"
    )
    assert not host.base.joinpath(".lock").exists()


def test_request_then_install_switches_publishes_runs_hooks_and_prunes(host, bao):
    issued = installed(host, 86400, keep_releases=1)
    (host.releases / "20190101T000000Z").mkdir()
    host.record_hook()

    proc = host.command("request")
    assert proc.returncode == 0, proc.stderr
    assert proc.result["changed"] is True
    csr = x509.load_pem_x509_csr(proc.result["csr"].encode())
    pending_key = serialization.load_pem_private_key((host.pending / "key.pem").read_bytes(), None)
    assert spki(csr.public_key()) == spki(pending_key.public_key()) != spki(issued["key"].public_key())
    assert csr.subject.rfc4514_string() == f"CN={HOST}" and pki.sans_of(csr) == sorted([HOST, HOST_IP])
    assert stat.S_IMODE(host.pending.stat().st_mode) == 0o700
    assert stat.S_IMODE((host.pending / "key.pem").stat().st_mode) == 0o640
    assert (host.pending / "key.pem").stat().st_gid == host.group.gr_gid
    assert host.target() == f"releases/{FIRST_RELEASE}"  # a request alone changes nothing in use
    assert host.hook_runs() == []

    answer = sign_csr(bao, proc.result["csr"], 86400)
    trust = bao["root"] + pem(local_ca("the next root")[1])  # a rollover's bundle: what install is given
    proc = host.command(
        "install", stdin={"certificate": answer["certificate"], "chain": "\n".join(answer["ca_chain"]), "ca": trust}
    )
    assert proc.returncode == 0, proc.stderr
    info = pki.cert_info(answer["certificate"])
    release = host.releases / proc.result["release"]
    assert proc.result == {
        "changed": True,
        "serial": info["serial"],
        "not_after": info["not_after"],
        "release": release.name,
        "problems": [],
        "revoked": [FIRST_RELEASE],
    }
    assert host.target() == f"releases/{release.name}" != f"releases/{FIRST_RELEASE}"
    assert not host.pending.exists() and not (host.base / "current.new").exists()
    assert (release / "key.pem").read_bytes() == key_pem(pending_key)
    assert (release / "cert.pem").read_text() == answer["certificate"].strip() + "\n"
    assert (release / "chain.pem").read_text() == bao["intermediate"]  # the root of ca_chain is dropped
    assert (release / "fullchain.pem").read_text() == answer["certificate"].strip() + "\n" + bao["intermediate"]
    assert (release / "ca.pem").read_text() == trust
    assert json.loads(host.fact.read_text()) == expected_fact(host, info)
    assert host.metrics.read_text() == pki.textfile_metrics([(NAME, info)])
    assert host.hook_runs() == [f"{NAME} {host.current} {info['serial']}"]
    assert host.release_names() == sorted([FIRST_RELEASE, release.name])  # 20190101T000000Z pruned
    assert f"sevenleague-pki: info: switched {host.current} to releases/{release.name}" in proc.stderr
    assert "sevenleague-pki: info: removed old release 20190101T000000Z" in proc.stderr

    status = host.command("status")
    assert status.returncode == 0, status.stderr
    assert status.result["renew"] is False and status.result["serial"] == info["serial"]
    assert status.result["stale"] == []
    assert len(host.hook_runs()) == 1


@pytest.mark.parametrize("case", ["another-key", "wrong-sans", "foreign-ca"])
def test_an_install_that_is_not_what_was_asked_for_changes_nothing(host, bao, case):
    installed(host, 86400)
    host.record_hook()
    before = host.snapshot()
    csr = host.command("request").result["csr"]
    ca = bao["root"]
    if case == "another-key":
        answer = sign_csr(bao, csr_for(new_key()), 86400)
        expected = "the certificate is for another key than the one the host generated: refusing certificate "
    elif case == "wrong-sans":
        answer = sign_csr(bao, csr, 86400, ip_sans="")
        expected = f"is for {HOST} instead of {', '.join(sorted([HOST, HOST_IP]))}: refusing certificate "
    else:
        answer = sign_csr(bao, csr, 86400)
        ca = pem(local_ca("not the fleet's CA")[1])
        expected = (
            "the trust bundle lacks the root of the new issuer: the chain ends at "
            "CN=sevenleague test intermediate, issued by CN=sevenleague test root"
        )
    assert host.pending.joinpath("key.pem").exists()
    proc = host.command(
        "install", stdin={"certificate": answer["certificate"], "chain": answer["issuing_ca"], "ca": ca}
    )
    assert proc.returncode == 1
    assert proc.result["failed"] is True and expected in proc.result["msg"], proc.result
    assert f"sevenleague-pki: error: {proc.result['msg']}" in proc.stderr
    assert host.snapshot() == before
    assert not host.pending.exists()
    assert host.hook_runs() == []
    # The pending key is gone with the refusal: the same answer cannot be installed a second time.
    again = host.command("install", stdin={"certificate": answer["certificate"], "ca": bao["root"]})
    assert again.returncode == 1 and again.result["msg"].startswith(f"no pending request in {host.pending}")
    assert host.snapshot() == before


def test_status_names_a_changed_trust_bundle_and_stale_publications_which_publish_rewrites(host, bao):
    issued = installed(host, 86400)
    info = pki.cert_info(issued["cert"])
    expect = {"issuer": bao["intermediate"], "ca": bao["root"]}
    before = host.snapshot()

    # The fact from before the tool wrote it, and no metrics: both stale, the certificate fine.
    proc = host.command("status", "--expect", stdin=expect)
    assert proc.returncode == 0, proc.stderr
    assert proc.result["renew"] is False and proc.result["reason"].startswith("valid: renews after")
    assert (proc.result["serial"], proc.result["not_after"]) == (info["serial"], info["not_after"])
    assert proc.result["stale"] == [str(host.fact), str(host.metrics)]
    assert proc.result["changed"] is False

    rolled = host.command("status", "--expect", stdin={**expect, "ca": bao["root"] + pem(local_ca("next")[1])})
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.result["renew"] is True and rolled.result["reason"] == "the trust bundle changed"
    assert rolled.result["stale"] == []

    new_issuer = host.command("status", "--expect", stdin={**expect, "issuer": pem(local_ca("new issuer")[1])})
    assert new_issuer.result["renew"] is True and new_issuer.result["reason"].startswith("issuer changed")
    assert host.snapshot() == before  # deciding changes nothing

    proc = host.command("publish")
    assert proc.returncode == 0, proc.stderr
    assert proc.result == {"changed": True, "written": [str(host.fact), str(host.metrics)]}
    assert json.loads(host.fact.read_text()) == expected_fact(host, info)
    assert host.metrics.read_text() == pki.textfile_metrics([(NAME, info)])
    assert stat.S_IMODE(host.fact.stat().st_mode) == 0o644

    again = host.command("publish")
    assert again.returncode == 0 and again.result == {"changed": False, "written": []}
    assert host.command("status", "--expect", stdin=expect).result["stale"] == []
    assert host.target() == f"releases/{FIRST_RELEASE}" and host.hook_runs() == []


# --- pieces -----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum_with_full_jitter():
    caps = [renew.backoff_delay(attempt, 5, 300, rand=lambda: 1.0) for attempt in range(1, 9)]
    assert caps == [5, 10, 20, 40, 80, 160, 300, 300]
    assert renew.backoff_delay(3, 5, 300, rand=lambda: 0.0) == 0
    assert all(0 <= renew.backoff_delay(4, 5, 300) <= 40 for _ in range(50))


def test_retries_stop_at_a_refusal_and_after_the_last_attempt(host, monkeypatch):
    host.configure(attempts=4, backoff_initial=1, backoff_max=2)
    cfg = tool_config.load_config(str(host.config_path))
    slept, calls = [], []

    def failing(error):
        def attempt():
            calls.append(error)
            raise error

        return attempt

    with pytest.raises(common.RenewError, match="down"):
        renew.renew_with_retries(cfg, failing(common.RenewError("down", retry=True)), sleep=slept.append)
    assert len(calls) == 4 and len(slept) == 3 and all(0 <= delay <= 2 for delay in slept)
    calls.clear()
    with pytest.raises(common.RenewError, match="refused"):
        renew.renew_with_retries(cfg, failing(common.RenewError("refused")), sleep=slept.append)
    assert len(calls) == 1


def test_releases_within_one_second_do_not_collide_and_pruning_spares_current(host):
    host.configure(keep_releases=1)
    cfg = tool_config.load_config(str(host.config_path))
    moment = datetime.datetime(2026, 3, 1, 4, 15, 0, tzinfo=UTC)
    names = [os.path.basename(store.make_release_dir(cfg, moment, host.group.gr_gid)) for _ in range(3)]
    assert names == ["20260301T041500Z", "20260301T041500Z-01", "20260301T041500Z-02"] == sorted(names)
    assert all(stat.S_IMODE((host.releases / name).stat().st_mode) == 0o750 for name in names)
    # Rolled back by hand to the oldest release: pruning keeps it and the newest other one.
    host.current.symlink_to(f"releases/{names[0]}")
    assert store.prune_releases(cfg) == [names[1]]
    assert host.release_names() == [names[0], names[2]]


def test_a_hooks_output_goes_to_stderr_and_stdout_holds_only_the_json_answer(host):
    """The timer's caller and the role parse the tool's stdout as JSON: whatever a reload hook
    prints (the envoy hook reports what Envoy serves) is logged, with a priority, to the journal."""
    installed(host, 90, due=True)
    host.hook("70-chatty", 'echo "a hook talking on stdout"')
    proc = host.run()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changed"] is True
    assert "<6>hook " in proc.stderr and "70-chatty: a hook talking on stdout" in proc.stderr
