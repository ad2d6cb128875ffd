"""The OpenBao backend against a real OpenBao dev server, with real keys and CSRs."""

import datetime

import pki_openbao_sign as mod
import pytest
from ansible_module import assert_documented, run_module
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openbao_dev import dev_server, free_port

from ansible_collections.sevenleague.platform.plugins.module_utils import openbao_sign, pki

UTC = datetime.UTC
DOMAIN = "sevenleague.test"
HOST = f"app1.{DOMAIN}"
HOST_IP = "10.213.7.21"
MOUNT = "pki_int"


# --- a real OpenBao ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("openbao")) as server:
        client = server["client"]
        client.sys.enable_secrets_engine("pki", path=MOUNT, config={"max_lease_ttl": "24h"})
        client.secrets.pki.generate_root("internal", common_name="sevenleague test root", mount_point=MOUNT)
        role = {
            "allowed_domains": DOMAIN,
            "allow_subdomains": True,
            "allow_bare_domains": False,
            "max_ttl": "1h",
            "key_type": "ec",
            "allow_ip_sans": True,
        }
        client.secrets.pki.create_or_update_role("host", role, mount_point=MOUNT)
        # A role that allows more than the issuer's remaining life, and an issuer that then truncates
        # instead of failing: OpenBao shortens the certificate silently, the module must not accept it.
        client.secrets.pki.create_or_update_role("long", {**role, "max_ttl": "48h"}, mount_point=MOUNT)
        client.write(f"{MOUNT}/issuer/default", leaf_not_after_behavior="truncate")
        yield server


@pytest.fixture
def client(bao):
    return openbao_sign.make_client(bao["url"], bao["token"], timeout=5)


# --- helpers ----------------------------------------------------------------------------------


def make_csr(sans, key=None, cn=HOST) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(pki.parse_sans(sans)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def sign(client, csr, common_name=HOST, role="host", **kwargs):
    return openbao_sign.sign_csr(client, mount=MOUNT, role=role, csr=csr, common_name=common_name, **kwargs)


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def issued_serials(client) -> set:
    """The serials OpenBao stored, read with the module's own client."""
    return set(client.request("LIST", f"{MOUNT}/certs", what="listing certificates")["data"]["keys"])


# --- signing ----------------------------------------------------------------------------------


def test_signing_keeps_the_hosts_key_and_names(client):
    key = ec.generate_private_key(ec.SECP256R1())
    alt = f"api.{DOMAIN}"
    result = sign(client, make_csr([HOST, alt, HOST_IP], key), alt_names=[alt], ip_sans=[HOST_IP], ttl="30m")
    cert = load(result["certificate"])
    assert result["changed"] and result["warnings"] == []
    assert spki(cert.public_key()) == spki(key.public_key())
    assert pki.sans_of(cert) == sorted([HOST, alt, HOST_IP]) == result["info"]["sans"]
    assert cert.subject.rfc4514_string() == f"CN={HOST}"
    assert pki.is_signed_by(cert, load(result["issuing_ca"])) and result["ca_chain"]
    # The shape of pki_builtin_ca's answer too: the role installs either backend's the same way.
    assert result["chain"] == "".join(result["ca_chain"])
    assert pki.is_signed_by(cert, load(pki.split_pem(result["chain"])[0].decode()))
    assert result["info"]["serial"] == result["serial_number"].replace(":", "")
    lifetime = pki.not_after(cert) - datetime.datetime.now(UTC)
    assert datetime.timedelta(minutes=28) < lifetime <= datetime.timedelta(minutes=30)


def test_a_csr_without_cn_gets_common_name(client):
    result = sign(client, make_csr([HOST_IP], cn=None), ip_sans=[HOST_IP], ttl=600)
    assert result["info"]["sans"] == [HOST_IP, HOST] and result["info"]["subject"] == f"CN={HOST}"
    assert sign(client, make_csr([], cn=None), ttl=600)["info"]["sans"] == [HOST]


def test_ttl_above_the_roles_maximum_is_refused_before_signing(client):
    before = issued_serials(client)
    with pytest.raises(pki.PKIError, match=r"ttl 7200 s is above the maximum of role host \(3600 s"):
        sign(client, make_csr([HOST]), ttl="2h")
    assert issued_serials(client) == before


def test_ttl_shortened_by_openbao_is_refused(client):
    # Role "long" allows 48 h, the issuer expires within 24 h and truncates: OpenBao issues a shorter
    # certificate without an error, which the pre-check cannot foresee.
    with pytest.raises(
        pki.PKIError,
        match=r"OpenBao issued certificate [0-9a-f:]+, which is refused: the CA "
        r"shortened certificate [0-9a-f]+: it ends at .* earlier than ttl 129600 s",
    ):
        sign(client, make_csr([HOST]), role="long", ttl="36h")


def test_a_san_outside_the_roles_domains_is_named(client):
    evil = "evil.example.com"
    with pytest.raises(
        pki.PKIError,
        match=f"OpenBao refused to sign with role host at {MOUNT}: "
        f"subject alternate name {evil} not allowed by this role",
    ):
        sign(client, make_csr([HOST, evil]), alt_names=[evil])
    with pytest.raises(pki.PKIError, match=f"common name {evil} not allowed by this role"):
        sign(client, make_csr([evil], cn=evil), common_name=evil)


def test_a_csr_asking_for_other_names_is_refused_locally(client):
    # With the role's default use_csr_sans, OpenBao would silently issue for the CSR's names.
    with pytest.raises(pki.PKIError, match=f"it asks also for app9.{DOMAIN}; it lacks api.{DOMAIN}"):
        sign(client, make_csr([HOST, f"app9.{DOMAIN}"]), alt_names=[f"api.{DOMAIN}"])
    with pytest.raises(pki.PKIError, match=f"the CSR's SANs \\(none\\) differ .*: it lacks {HOST_IP}"):
        sign(client, make_csr([]), ip_sans=[HOST_IP])
    with pytest.raises(pki.PKIError, match="the CSR's CN 'other.sevenleague.test' differs from common_name"):
        sign(client, make_csr([HOST], cn=f"other.{DOMAIN}"))


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("not a csr", "csr is not a PEM certificate signing request"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nbm9wZQ==\n-----END CERTIFICATE REQUEST-----\n",
            "csr is not a PEM certificate signing request",
        ),
    ],
    ids=["garbage", "bad-der"],
)
def test_a_bad_csr_is_named(client, csr, message):
    with pytest.raises(pki.PKIError, match=message):
        sign(client, csr)


def test_a_tampered_csr_is_named(client):
    der = x509.load_pem_x509_csr(make_csr([HOST]).encode()).public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(der.replace(b"app1", b"app9")).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PKIError, match="the CSR's signature does not verify"):
        sign(client, tampered.decode(), common_name=f"app9.{DOMAIN}")


def test_check_mode_validates_but_signs_nothing(client):
    before = issued_serials(client)
    result = sign(client, make_csr([HOST]), ttl=600, check_mode=True)
    assert result["changed"] and result["certificate"] == "" and result["info"] == {}
    with pytest.raises(pki.PKIError, match="above the maximum of role host"):
        sign(client, make_csr([HOST]), ttl="1d", check_mode=True)
    with pytest.raises(pki.PKIError, match="has no role 'nope'"):
        sign(client, make_csr([HOST]), role="nope", check_mode=True)
    assert issued_serials(client) == before


def test_a_wrong_token_is_denied(bao):
    client = openbao_sign.make_client(bao["url"], "not-the-token", timeout=5)
    with pytest.raises(pki.PKIError, match=f"OpenBao at {bao['url']} denied the token lookup"):
        sign(client, make_csr([HOST]))


def test_unreachable_openbao_is_named():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    client = openbao_sign.make_client(url, "token", timeout=2)
    with pytest.raises(pki.PKIError, match=f"cannot reach OpenBao at {url}: Connection refused"):
        openbao_sign.check_health(client)
    with pytest.raises(pki.PKIError, match="cannot reach OpenBao"):
        sign(client, make_csr([HOST]))


def test_sealed_openbao_is_named(tmp_path):
    with dev_server(tmp_path) as server:
        server["client"].sys.seal()
        client = openbao_sign.make_client(server["url"], server["token"], timeout=5)
        message = f"OpenBao at {server['url']} is sealed: unseal it (see roles/openbao/README.md)"
        with pytest.raises(pki.PKIError, match=rf"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
            openbao_sign.check_health(client)
        with pytest.raises(pki.PKIError, match="is sealed"):
            sign(client, make_csr([HOST]))


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        (None, None),
        ("", None),
        (3600, 3600),
        ("3600", 3600),
        ("90m", 5400),
        ("1h30m", 5400),
        ("7d", 604800),
    ],
)
def test_parse_ttl(ttl, seconds):
    assert openbao_sign.parse_ttl(ttl) == seconds


@pytest.mark.parametrize("ttl", ["1x", "-5", "1.5h", "30"])
def test_parse_ttl_refuses(ttl):
    with pytest.raises(pki.PKIError, match="ttl"):
        openbao_sign.parse_ttl(ttl)


def test_names_are_checked_before_openbao_is_asked():
    client = openbao_sign.make_client("http://127.0.0.1:9", "token", timeout=1)
    with pytest.raises(pki.PKIError, match="ip_sans: 'app1' is not an IP address"):
        sign(client, make_csr([HOST]), ip_sans=["app1"])
    with pytest.raises(pki.PKIError, match="is an IP address: give it in ip_sans"):
        sign(client, make_csr([HOST]), alt_names=[HOST_IP])


# --- the module as Ansible sees it ------------------------------------------------------------


def test_documentation_matches_the_argument_spec():
    assert_documented(mod)
    assert mod.ARGUMENT_SPEC["token"]["no_log"]


def test_module_runs_through_ansible(bao, tmp_path):
    args = {
        "url": bao["url"],
        "token": bao["token"],
        "role": "host",
        "csr": make_csr([HOST, HOST_IP]),
        "common_name": HOST,
        "ip_sans": [HOST_IP],
        "ttl": 900,
    }
    result, output = run_module("pki_openbao_sign", args, tmp_path)
    assert bao["token"] not in output
    assert result["changed"] and not result.get("failed"), result.get("msg")
    assert result["info"]["sans"] == [HOST_IP, HOST]
    assert spki(load(result["certificate"]).public_key()) == spki(
        x509.load_pem_x509_csr(args["csr"].encode()).public_key()
    )
