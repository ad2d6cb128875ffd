"""The addresses a host's certificate login is bound to, and the certificates of a host that left."""

import datetime

import pki
import pytest
from ansible.errors import AnsibleFilterError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def test_the_login_is_bound_to_the_inventory_address_alone():
    assert pki.login_cidrs("app1.example.internal", "10.20.0.21") == ["10.20.0.21"]
    assert pki.login_cidrs("app1.example.internal", "2001:db8::21") == ["2001:db8::21"]


def test_the_host_s_own_sources_replace_its_address():
    sources = ["192.0.2.7", "198.51.100.0/30", "192.0.2.7/32"]
    assert pki.login_cidrs("app1", "10.20.0.21", sources) == ["192.0.2.7", "198.51.100.0/30"]


@pytest.mark.parametrize(
    ("ansible_host", "sources", "said"),
    [
        (None, None, "would work from anywhere"),
        ("", [], "would work from anywhere"),
        ("app1.example.internal", None, "not an IP address"),
        ("10.20.0.21", ["10.20.0.0/33"], "not an IP address"),
        ("10.20.0.21", ["10.20.0.1/24"], "not an IP address"),
    ],
)
def test_a_host_without_a_usable_address_is_refused_by_name(ansible_host, sources, said):
    with pytest.raises(AnsibleFilterError, match=said) as refused:
        pki.login_cidrs("app1.example.internal", ansible_host, sources)
    assert "app1.example.internal" in str(refused.value)


NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def stored(serial, common_name, hours_left=12, revoked=0):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(hours=hours_left))
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return {"item": serial, "current": {"certificate": pem, "revocation_time": revoked}}


def test_only_the_valid_unrevoked_certificates_of_the_named_hosts_are_picked():
    results = [
        stored("01", "gone.example.internal"),
        stored("02", "app1.example.internal"),
        stored("03", "gone.example.internal", hours_left=-1),
        stored("04", "gone.example.internal", revoked=1765000000),
        stored("05", "gone.example.internal.evil"),
        {"item": "06", "current": {}},
    ]
    assert pki.valid_serials_of(results, ["gone.example.internal"], NOW) == ["01"]
    assert pki.valid_serials_of(results, [], NOW) == []
