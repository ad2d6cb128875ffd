"""The built-in CA module and the shared certificate policy, with real keys and certificates."""

import datetime
import ipaddress
import os
import re
import subprocess
from pathlib import Path

import pki_builtin_ca as mod
import pytest
from ansible_module import assert_documented, run_module
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ansible_collections.sevenleague.platform.plugins.module_utils import ca_keyfile, pki

ROOT = Path(__file__).resolve().parents[2]

UTC = datetime.UTC
DOMAIN = "sevenleague.test"
NETWORK = "10.213.7.0/24"
HOST = f"app1.{DOMAIN}"
HOST_IP = "10.213.7.21"
PASSPHRASE = "correct horse battery staple"
INTERMEDIATE_PASSPHRASE = "intermediate secret, not the root's"
DAY = 86400


# --- helpers ----------------------------------------------------------------------------------


def make_csr(sans, key=None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored by the CA")])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(pki.parse_sans(sans)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def new_ca(ca_dir, **kwargs):
    options = {
        "root_passphrase": PASSPHRASE,
        "intermediate_passphrase": INTERMEDIATE_PASSPHRASE,
        "allowed_domains": [DOMAIN],
        "allowed_networks": [NETWORK],
    }
    return mod.ensure_ca(str(ca_dir), **{**options, **kwargs})


def sign(ca, csr, sans, ttl=DAY, **kwargs):
    options = {"max_ttl": 7 * DAY, "allowed_domains": [DOMAIN], "allowed_networks": [NETWORK]}
    return mod.sign_csr(ca, csr, sans, ttl, **{**options, **kwargs})


def forge(ca, names):
    """A leaf for `names` made with the intermediate's own key, past every check of sign_csr:
    what a stolen intermediate key could make. Only the name constraints can refuse it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, names[0].value if isinstance(names[0], x509.DNSName) else "x")]
            )
        )
        .issuer_name(ca.intermediate_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.intermediate_cert.public_key()), critical=False
        )
        .sign(ca.intermediate_key, hashes.SHA256())
    )


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    """The keys' real KDF cost is tested in test_pki_builtin_kdf.py; here it would only cost time."""
    monkeypatch.setattr(ca_keyfile, "KDF_ITERATIONS", 1000)


@pytest.fixture
def ca_dir(tmp_path):
    new_ca(tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir):
    return mod.load_ca(str(ca_dir), INTERMEDIATE_PASSPHRASE)


@pytest.fixture
def issued(ca):
    """A 24 h certificate for HOST and HOST_IP, issued now."""
    sans = [HOST, HOST_IP]
    return sign(ca, make_csr(sans), sans)


# --- the CA -----------------------------------------------------------------------------------


def test_new_ca_has_private_files_and_encrypted_keys(tmp_path):
    result = new_ca(tmp_path / "ca")
    ca_dir = tmp_path / "ca"
    assert result["changed"] and result["created"]
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "root.key") == 0o600 and mode(ca_dir / "intermediate.key") == 0o600
    root_key = (ca_dir / "root.key").read_bytes()
    assert root_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(root_key, password=None)
    assert serialization.load_pem_private_key(root_key, password=PASSPHRASE.encode())
    intermediate_key = (ca_dir / "intermediate.key").read_bytes()
    assert intermediate_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert serialization.load_pem_private_key(intermediate_key, password=INTERMEDIATE_PASSPHRASE.encode())
    assert result["rekeyed"] == []
    chain = (ca_dir / "chain.pem").read_text()
    assert chain == (ca_dir / "intermediate.crt").read_text() + (ca_dir / "root.crt").read_text()
    assert result["chain"] == chain and result["root_certificate"] == (ca_dir / "root.crt").read_text()
    assert not [name for name in os.listdir(ca_dir) if name.startswith(".") and name != ".lock"], "temp files left"


def test_ca_certificates_have_the_promised_keys_limits_and_name_constraints(ca):
    root, intermediate = ca.root_cert, ca.intermediate_cert
    assert isinstance(root.public_key().curve, ec.SECP384R1)
    assert isinstance(intermediate.public_key().curve, ec.SECP256R1)
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    intermediate_bc = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length == 1
    assert intermediate_bc.critical and intermediate_bc.value.ca and intermediate_bc.value.path_length == 0
    for cert in (root, intermediate):
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
        assert constraints.critical
        assert set(constraints.value.permitted_subtrees) == {
            x509.DNSName(DOMAIN),
            x509.IPAddress(ipaddress.ip_network(NETWORK)),
        }
    assert pki.not_after(root) - pki.not_before(root) > datetime.timedelta(days=3649)
    assert pki.not_after(intermediate) - pki.not_before(intermediate) < datetime.timedelta(days=366)


def test_ca_without_allowed_networks_excludes_every_ip_address(tmp_path):
    """No permitted IP subtree would leave addresses unconstrained (RFC 5280): all are excluded instead,
    so even the CA's own key cannot make a certificate for an address that verifies."""
    new_ca(tmp_path / "ca", allowed_networks=[])
    ca = mod.load_ca(str(tmp_path / "ca"), INTERMEDIATE_PASSPHRASE)
    for cert in (ca.root_cert, ca.intermediate_cert):
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        assert set(constraints.permitted_subtrees) == {x509.DNSName(DOMAIN)}
        assert set(constraints.excluded_subtrees) == {
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        }
    forged = forge(ca, [x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address(HOST_IP))])
    verifier = PolicyBuilder().store(Store([ca.root_cert])).build_server_verifier(x509.DNSName(HOST))
    with pytest.raises(VerificationError, match="(?i)name constraint|excluded|not permitted"):
        verifier.verify(forged, [ca.intermediate_cert])
    # And the CA refuses to sign one in the first place.
    with pytest.raises(pki.PKIError, match="IP SAN"):
        sign(ca, make_csr([HOST, HOST_IP]), [HOST, HOST_IP], allowed_networks=[])


def test_ca_without_any_allowed_name_constrains_addresses_only(tmp_path):
    new_ca(tmp_path / "ca", allowed_domains=[], allowed_networks=[])
    root = mod.load_ca(str(tmp_path / "ca"), INTERMEDIATE_PASSPHRASE).root_cert
    constraints = root.extensions.get_extension_for_class(x509.NameConstraints).value
    assert constraints.permitted_subtrees is None and len(constraints.excluded_subtrees) == 2


def test_existing_ca_is_left_untouched(ca_dir):
    before = {path.name: path.read_bytes() for path in ca_dir.iterdir()}
    again = new_ca(ca_dir)
    assert not again["changed"] and not again["created"]
    assert {path.name: path.read_bytes() for path in ca_dir.iterdir()} == before
    assert not again["intermediate_renew_needed"]
    assert again["intermediate_renew_reason"].startswith("valid: renews after ")


def test_check_mode_creates_nothing(tmp_path):
    result = new_ca(tmp_path / "ca", check_mode=True)
    assert result["changed"] and result["created"]
    assert not (tmp_path / "ca").exists()


def test_wrong_root_passphrase_is_named(ca_dir):
    with pytest.raises(pki.PKIError) as error:
        new_ca(ca_dir, root_passphrase="not the passphrase")
    assert str(error.value) == f"root CA key in {ca_dir}/root.key cannot be decrypted with the given passphrase"


def test_encrypted_intermediate_key_needs_its_passphrase(ca_dir):
    assert mod.load_ca(str(ca_dir), INTERMEDIATE_PASSPHRASE).intermediate_key is not None
    with pytest.raises(pki.PKIError, match=r"is encrypted: give its passphrase \(intermediate_passphrase\)"):
        mod.load_ca(str(ca_dir))
    with pytest.raises(pki.PKIError, match="cannot be decrypted with the given passphrase"):
        mod.load_ca(str(ca_dir), "wrong")
    # The root's passphrase is not the intermediate's.
    with pytest.raises(pki.PKIError) as error:
        new_ca(ca_dir, intermediate_passphrase=PASSPHRASE)
    assert str(error.value) == (
        f"intermediate CA key in {ca_dir}/intermediate.key cannot be decrypted with the given passphrase"
    )


@pytest.mark.parametrize("option", ["root_passphrase", "intermediate_passphrase"])
def test_a_ca_needs_both_passphrases(tmp_path, option):
    with pytest.raises(pki.PKIError, match=f"{option} is empty: the .* key is always encrypted at rest"):
        new_ca(tmp_path / "ca", **{option: ""})
    assert not (tmp_path / "ca").exists()


def test_partial_ca_is_never_completed(ca_dir):
    (ca_dir / "intermediate.crt").unlink()
    with pytest.raises(pki.PKIError, match="partial CA .* without intermediate.crt.*restore the missing files"):
        new_ca(ca_dir)
    assert not (ca_dir / "intermediate.crt").exists()


def test_missing_chain_and_loose_key_mode_are_repaired(ca_dir):
    (ca_dir / "chain.pem").unlink()
    os.chmod(ca_dir / "intermediate.key", 0o644)
    os.chmod(ca_dir, 0o755)
    result = new_ca(ca_dir)
    assert result["changed"] and not result["created"]
    assert (ca_dir / "chain.pem").read_text() == result["chain"]
    assert mode(ca_dir / "intermediate.key") == 0o600 and mode(ca_dir) == 0o700


def test_intermediate_rollover_is_reported_not_done(ca_dir):
    later = datetime.datetime.now(UTC) + datetime.timedelta(days=300)
    before = (ca_dir / "intermediate.crt").read_bytes()
    result = new_ca(ca_dir, now=later)
    assert result["intermediate_renew_needed"] and not result["changed"]
    assert re.fullmatch(r"\d+% of the lifetime left \(renew below 33%\)", result["intermediate_renew_reason"])
    assert any("rollover" in warning for warning in result["warnings"])
    assert (ca_dir / "intermediate.crt").read_bytes() == before


def test_changed_allowed_domains_warn_that_only_a_new_ca_changes_them(ca_dir):
    result = new_ca(ca_dir, allowed_domains=[DOMAIN, "example.org"])
    assert not result["changed"]
    assert any("name constraints" in warning and "only with a new CA" in warning for warning in result["warnings"])


def test_signing_without_a_ca_says_what_to_run(tmp_path):
    with pytest.raises(pki.PKIError, match="no CA in .*run state=ca first"):
        mod.load_ca(str(tmp_path))


# --- signing ----------------------------------------------------------------------------------


def test_issued_certificate_verifies_for_its_dns_name_and_ip(ca, issued):
    leaf = load(issued["certificate"])
    store = Store([load(issued["ca"])])
    for name in (x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address(HOST_IP))):
        verifier = PolicyBuilder().store(store).build_server_verifier(name)
        chain = verifier.verify(leaf, [load(issued["chain"])])
        assert [cert.subject for cert in chain] == [leaf.subject, ca.intermediate_cert.subject, ca.root_cert.subject]
    client = PolicyBuilder().store(store).build_client_verifier().verify(leaf, [load(issued["chain"])])
    assert set(client.subjects) == {x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address(HOST_IP))}


def test_a_name_the_root_does_not_permit_fails_verification(ca):
    """Name constraints hold even against the CA's own key: what a stolen intermediate key could make."""

    def forge_and_verify(name):
        verifier = PolicyBuilder().store(Store([ca.root_cert])).build_server_verifier(x509.DNSName(name))
        return verifier.verify(forge(ca, [x509.DNSName(name)]), [ca.intermediate_cert])

    assert forge_and_verify(HOST)  # the same forgery for a permitted name verifies: the constraint is what refuses
    with pytest.raises(VerificationError, match="(?i)name constraint|no permitted|not permitted"):
        forge_and_verify("evil.example.com")


def test_issued_certificate_carries_the_promised_fields(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    result = sign(ca, make_csr([HOST], key), [HOST], ttl=3600, now=now)
    leaf = load(result["certificate"])
    assert result["changed"] and not result["ttl_clipped"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    assert leaf.issuer == ca.intermediate_cert.subject
    assert pki.not_before(leaf) == now - datetime.timedelta(minutes=5)
    assert pki.not_after(leaf) == now + datetime.timedelta(seconds=3600)
    assert 0 < leaf.serial_number < 2**159
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    extensions = leaf.extensions
    basic = extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_encipherment
    assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    intermediate_ski = ca.intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert (
        extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == intermediate_ski.digest
    )
    assert extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert result["chain"] == ca.pem(ca.intermediate_cert) and result["ca"] == ca.pem(ca.root_cert)
    assert result["info"]["serial"] == pki.serial_hex(leaf.serial_number)
    assert result["info"]["sans"] == [HOST]


def test_rsa_keys_also_get_key_encipherment(ca):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = load(sign(ca, make_csr([HOST], key), [HOST])["certificate"])
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_ttl_above_the_maximum_is_refused(ca):
    with pytest.raises(pki.PKIError, match=r"ttl 604801 s is above the CA's maximum of 604800 s \(max_ttl\)"):
        sign(ca, make_csr([HOST]), [HOST], ttl=7 * DAY + 1)


def test_ttl_below_a_minute_is_refused(ca):
    with pytest.raises(pki.PKIError, match="below the minimum of 60 s"):
        sign(ca, make_csr([HOST]), [HOST], ttl=30)


def test_ttl_beyond_the_intermediate_is_clipped_to_it(tmp_path):
    new_ca(tmp_path / "ca", intermediate_days=1)
    ca = mod.load_ca(str(tmp_path / "ca"), INTERMEDIATE_PASSPHRASE)
    result = sign(ca, make_csr([HOST]), [HOST], ttl=3 * DAY)
    assert result["ttl_clipped"] and result["warnings"]
    assert pki.not_after(load(result["certificate"])) == pki.not_after(ca.intermediate_cert)


@pytest.mark.parametrize("san", ["evil.example.com", f"{DOMAIN}.example.com", f"x{DOMAIN}", "test"])
def test_a_san_outside_the_allowed_domains_is_refused(ca, san):
    with pytest.raises(pki.PKIError) as error:
        sign(ca, make_csr([san]), [san])
    assert str(error.value) == f"refusing to sign: SAN {san} is outside the allowed domains ({DOMAIN})"


@pytest.mark.parametrize(
    ("networks", "message"),
    [
        ([NETWORK], f"IP SAN 192.0.2.1 is outside the allowed networks ({NETWORK})"),
        ([], "IP SAN 192.0.2.1 is not allowed"),
    ],
)
def test_an_ip_san_outside_the_allowed_networks_is_refused(ca, networks, message):
    with pytest.raises(pki.PKIError, match=re.escape(message)):
        sign(ca, make_csr(["192.0.2.1"]), ["192.0.2.1"], allowed_networks=networks)


def test_a_wildcard_needs_allow_wildcard(ca):
    wildcard = f"*.apps.{DOMAIN}"
    with pytest.raises(pki.PKIError, match=r"wildcard SAN \*\.apps\.sevenleague\.test is not allowed"):
        sign(ca, make_csr([wildcard]), [wildcard])
    assert pki.sans_of(load(sign(ca, make_csr([wildcard]), [wildcard], allow_wildcard=True)["certificate"])) == [
        wildcard
    ]


def test_a_csr_asking_for_an_extra_san_is_refused(ca):
    csr = make_csr([HOST, f"db.{DOMAIN}"])
    with pytest.raises(pki.PKIError, match=rf"it asks also for db\.{DOMAIN}; create the CSR for exactly these"):
        sign(ca, csr, [HOST])


def test_a_csr_without_sans_is_refused(ca):
    with pytest.raises(pki.PKIError, match=r"the CSR's SANs \(none\) differ from sans"):
        sign(ca, make_csr([]), [HOST])


def test_a_tampered_csr_is_refused(ca):
    csr = x509.load_pem_x509_csr(make_csr([HOST]).encode())
    # Same length, so the DER still parses; only the signature no longer matches.
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"app1", b"app9")
    tampered = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(pki.PKIError, match="the CSR's signature does not verify"):
        sign(ca, tampered, [f"app9.{DOMAIN}"])


def test_garbage_instead_of_a_csr_is_named(ca):
    with pytest.raises(pki.PKIError, match="csr is not a PEM certificate signing request"):
        sign(ca, "-----BEGIN CERTIFICATE REQUEST-----\nbm9wZQ==\n-----END CERTIFICATE REQUEST-----\n", [HOST])


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: ec.generate_private_key(ec.SECP192R1()), "ECDSA curve secp192r1 is not accepted"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA-1024 is too weak"),
    ],
    ids=["P-192", "RSA-1024"],
)
def test_a_weak_key_is_refused(ca, make_key, message):
    with pytest.raises(pki.PKIError, match=f"the CSR's key is not acceptable: {message}"):
        sign(ca, make_csr([HOST], make_key()), [HOST])


def test_check_mode_validates_but_signs_nothing(ca):
    result = sign(ca, make_csr([HOST]), [HOST], check_mode=True)
    assert result["changed"] and result["certificate"] == "" and result["info"] == {}
    with pytest.raises(pki.PKIError, match="outside the allowed domains"):
        sign(ca, make_csr(["evil.example.com"]), ["evil.example.com"], check_mode=True)


def test_signing_after_the_intermediate_expired_is_refused(ca):
    later = pki.not_after(ca.intermediate_cert) + datetime.timedelta(seconds=1)
    with pytest.raises(pki.PKIError, match="the intermediate CA expired at .*roll it over"):
        sign(ca, make_csr([HOST]), [HOST], now=later)


# --- the renewal policy -----------------------------------------------------------------------


def at_fraction(cert_pem: str, elapsed: float) -> datetime.datetime:
    cert = load(cert_pem)
    start, end = pki.not_before(cert), pki.not_after(cert)
    return start + (end - start) * elapsed


def decide(cert_pem, now, sans=(HOST, HOST_IP), issuer=None, **kwargs):
    return pki.renewal_decision(cert_pem, now=now, wanted_sans=list(sans), issuer_cert_pem=issuer, **kwargs)


@pytest.mark.parametrize("nothing", [None, b"", "", "  \n"])
def test_no_certificate_means_renew(nothing):
    assert decide(nothing, datetime.datetime.now(UTC)) == (True, "no certificate")


def test_a_fresh_certificate_is_kept_until_two_thirds_of_its_life(issued):
    cert = load(issued["certificate"])
    renews = pki.renew_after(cert)
    assert renews == pki.not_before(cert) + (pki.not_after(cert) - pki.not_before(cert)) * (2 / 3)
    assert decide(issued["certificate"], datetime.datetime.now(UTC), issuer=issued["chain"]) == (
        False,
        f"valid: renews after {pki.iso(renews)}",
    )
    assert not decide(issued["certificate"], at_fraction(issued["certificate"], 0.6))[0]


def test_renew_when_less_than_a_third_is_left(issued):
    renew, reason = decide(issued["certificate"], at_fraction(issued["certificate"], 0.7), issuer=issued["chain"])
    assert renew
    assert re.fullmatch(r"(29|30)% of the lifetime left \(renew below 33%\)", reason)


def test_renew_fraction_is_configurable(issued):
    renew, reason = decide(issued["certificate"], at_fraction(issued["certificate"], 0.6), renew_fraction=0.5)
    assert renew and reason.endswith("(renew below 50%)")
    with pytest.raises(pki.PKIError, match="renew_fraction must lie between 0 and 1"):
        decide(issued["certificate"], datetime.datetime.now(UTC), renew_fraction=1.5)


def test_an_expired_certificate_is_renewed(issued):
    cert = load(issued["certificate"])
    now = pki.not_after(cert) + datetime.timedelta(seconds=1)
    assert decide(issued["certificate"], now, issuer=issued["chain"]) == (
        True,
        f"expired at {pki.iso(pki.not_after(cert))}",
    )


def test_a_clock_further_behind_than_the_tolerance_is_named_as_the_cause(issued):
    now = pki.not_before(load(issued["certificate"])) - datetime.timedelta(hours=1)
    renew, reason = decide(issued["certificate"], now)
    assert renew and reason.startswith("not valid before")
    assert "this host's clock is 3600 s behind its CA's, more than the 300 s clock-skew tolerance" in reason


@pytest.mark.parametrize("behind", [1, 31, 299])
def test_a_clock_behind_within_the_tolerance_does_not_renew_a_fresh_certificate(issued, behind):
    """OpenBao backdates by 30 s: a host whose clock lags more than that must not renew on every run."""
    now = pki.not_before(load(issued["certificate"])) - datetime.timedelta(seconds=behind)
    renew, reason = decide(issued["certificate"], now, issuer=issued["chain"])
    assert not renew, reason
    assert f"{behind} s ahead of this host's clock (within the 300 s clock-skew tolerance)" in reason


def test_an_issued_certificate_too_far_in_the_future_is_refused_with_the_clock_named(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    future = datetime.datetime.now(UTC) + datetime.timedelta(minutes=20)
    result = sign(ca, make_csr([HOST], key), [HOST], now=future)
    with pytest.raises(pki.PKIError, match="this host's clock is .* behind its CA's.*fix the host's time sync"):
        pki.check_issued(
            result["certificate"],
            public_key=key.public_key(),
            wanted_sans=[HOST],
            chain_pem=result["chain"],
            trust_pem=pki.split_pem(result["chain"])[-1],
        )


def test_changed_sans_mean_renew_and_are_named(issued):
    now = datetime.datetime.now(UTC)
    assert decide(issued["certificate"], now, sans=[HOST, HOST_IP, f"api.{DOMAIN}"]) == (
        True,
        f"SANs differ: missing api.{DOMAIN}",
    )
    assert decide(issued["certificate"], now, sans=[HOST]) == (True, f"SANs differ: extra {HOST_IP}")
    assert decide(issued["certificate"], now, sans=[f"app2.{DOMAIN}"]) == (
        True,
        f"SANs differ: missing app2.{DOMAIN}; extra {HOST_IP}, {HOST}",
    )


def test_sans_compare_normalized(ca):
    sans = [HOST, "fd00::1"]
    issued = sign(ca, make_csr(sans), sans, allowed_networks=[NETWORK, "fd00::/64"])
    renew, reason = decide(
        issued["certificate"], datetime.datetime.now(UTC), sans=["APP1.SevenLeague.test.", "FD00:0::0001"]
    )
    assert (renew, reason[:6]) == (False, "valid:")


def test_a_certificate_from_another_ca_is_renewed(issued, tmp_path):
    now = datetime.datetime.now(UTC)
    new_ca(tmp_path / "other", name="other")
    other = mod.load_ca(str(tmp_path / "other"), INTERMEDIATE_PASSPHRASE)
    renew, reason = decide(issued["certificate"], now, issuer=other.pem(other.intermediate_cert))
    assert renew and reason.startswith("issuer changed: issued by CN=sevenleague Intermediate CA")
    # A rolled-over intermediate keeps its name; the key identifiers tell the two apart.
    new_ca(tmp_path / "same-name")
    same_name = mod.load_ca(str(tmp_path / "same-name"), INTERMEDIATE_PASSPHRASE)
    renew, reason = decide(issued["certificate"], now, issuer=same_name.pem(same_name.intermediate_cert))
    assert renew and reason.startswith("issuer changed: issued under key id")
    assert not pki.is_signed_by(load(issued["certificate"]), same_name.intermediate_cert)


def test_an_unreadable_current_certificate_is_renewed():
    renew, reason = decide("not a certificate", datetime.datetime.now(UTC))
    assert renew and reason.startswith("the current certificate is not a PEM certificate")


def test_a_naive_now_is_a_programming_error(issued):
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(issued["certificate"], datetime.datetime.now())


# --- SAN rules, facts and metrics -------------------------------------------------------------


def test_parse_sans_types_and_normalizes():
    names = pki.parse_sans([HOST.upper(), HOST_IP, "FD00::1", HOST])
    assert names == [
        x509.DNSName(HOST),
        x509.IPAddress(ipaddress.ip_address(HOST_IP)),
        x509.IPAddress(ipaddress.ip_address("fd00::1")),
    ]
    for bad in ("bad_name.sevenleague.test", "-x.sevenleague.test", "bücher.sevenleague.test", ""):
        with pytest.raises(pki.PKIError, match="SAN"):
            pki.parse_sans([bad])


@pytest.mark.parametrize(
    ("sans", "allow_ip", "problems"),
    [
        ([DOMAIN, HOST, f"a.b.{DOMAIN}"], False, []),
        (["other.test"], False, [f"SAN other.test is outside the allowed domains ({DOMAIN})"]),
        ([HOST_IP], True, []),
        ([HOST_IP], False, [f"IP SAN {HOST_IP} is not allowed (this CA issues IP SANs only for allowed_networks)"]),
        ([f"*.{DOMAIN}"], False, [f"wildcard SAN *.{DOMAIN} is not allowed (allow_wildcard is off)"]),
        ([], False, ["no SANs requested"]),
    ],
)
def test_check_sans_allowed(sans, allow_ip, problems):
    assert pki.check_sans_allowed(sans, [DOMAIN], allow_ip, [NETWORK]) == problems


def test_cert_info(issued):
    cert = load(issued["certificate"])
    info = pki.cert_info(issued["certificate"])
    assert info == {
        "serial": pki.serial_hex(cert.serial_number),
        "not_before": pki.not_before(cert).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": pki.not_after(cert).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sans": [HOST_IP, HOST],
        "issuer": "CN=sevenleague Intermediate CA,O=sevenleague",
        "subject": f"CN={HOST}",
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }
    assert len(info["serial"]) % 2 == 0 and int(info["serial"], 16) == cert.serial_number


NOW = datetime.datetime(2026, 1, 1, 6, 0, tzinfo=datetime.UTC)


def test_textfile_metrics_is_sorted_typed_exact_and_labelled_by_name_alone():
    infos = [
        ("web", {"serial": "0b", "not_before": "2026-01-01T00:00:00Z", "not_after": "2026-01-02T00:00:00Z"}),
        ('we"ird', {"serial": "0a", "not_before": "2026-01-01T00:00:00Z", "not_after": "2026-01-01T12:00:00Z"}),
    ]
    text = pki.textfile_metrics(infos, NOW)
    assert text == pki.textfile_metrics(list(reversed(infos)), NOW) and text.endswith("\n")
    samples, declared = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, metric, kind = line.split()
            assert kind == "gauge"
            declared.append(metric)
        elif not line.startswith("# HELP "):
            # No serial label: a renewal must not start a new series.
            match = re.fullmatch(r'(\w+)\{name="((?:[^"\\]|\\.)*)"\} (\d+)', line)
            assert match, line
            assert match[1] in declared, "a sample comes after its TYPE line"
            samples[match[1], match[2]] = int(match[3])
    assert declared == [
        "sevenleague_certificate_not_after_seconds",
        "sevenleague_certificate_not_before_seconds",
        "sevenleague_certificate_clock_behind_seconds",
    ]
    assert samples == {
        ("sevenleague_certificate_not_after_seconds", 'we\\"ird'): 1767268800,
        ("sevenleague_certificate_not_after_seconds", "web"): 1767312000,
        ("sevenleague_certificate_not_before_seconds", 'we\\"ird'): 1767225600,
        ("sevenleague_certificate_not_before_seconds", "web"): 1767225600,
        ("sevenleague_certificate_clock_behind_seconds", 'we\\"ird'): 0,
        ("sevenleague_certificate_clock_behind_seconds", "web"): 0,
    }


@pytest.mark.parametrize("behind, reported", [(0, 0), (300, 0), (301, 301), (3600, 3600)])
def test_the_clock_metric_reports_a_host_behind_its_ca_only_beyond_the_tolerance(behind, reported):
    """A certificate that starts `behind` seconds in this host's future: within the 300 s tolerance
    the metric stays 0 (so the file does not change between runs); beyond it, it says how far."""
    start = NOW + datetime.timedelta(seconds=behind)
    info = {"serial": "01", "not_before": pki.iso(start), "not_after": pki.iso(start + datetime.timedelta(days=1))}
    text = pki.textfile_metrics([("host", info)], NOW)
    assert f'sevenleague_certificate_clock_behind_seconds{{name="host"}} {reported}\n' in text


def test_textfile_metrics_from_a_real_certificate(issued):
    text = pki.textfile_metrics([("host", issued["info"])])
    epoch = int(pki.not_after(load(issued["certificate"])).timestamp())
    assert f'sevenleague_certificate_not_after_seconds{{name="host"}} {epoch}\n' in text
    assert 'sevenleague_certificate_clock_behind_seconds{name="host"} 0\n' in text


# --- the module as Ansible sees it ------------------------------------------------------------


def test_documentation_matches_the_argument_spec():
    assert_documented(mod)
    assert mod.ARGUMENT_SPEC["root_passphrase"]["no_log"] and mod.ARGUMENT_SPEC["intermediate_passphrase"]["no_log"]


def test_ansible_doc_renders_the_module():
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-doc"), "-M", "library", "pki_builtin_ca"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "state=signed" in proc.stdout


def ansible(module_args: dict, tmp_path: Path) -> dict:
    """Run the module ad hoc on the implicit localhost, exactly as a play delegating to it would."""
    result, output = run_module("pki_builtin_ca", module_args, tmp_path)
    result["_stdout"] = output
    return result


def test_module_runs_through_ansible(tmp_path):
    ca_dir = str(tmp_path / "ca")
    policy = {"ca_dir": ca_dir, "allowed_domains": [DOMAIN], "allowed_networks": [NETWORK]}
    created = ansible(
        {"state": "ca", "root_passphrase": PASSPHRASE, "intermediate_passphrase": INTERMEDIATE_PASSPHRASE, **policy},
        tmp_path,
    )
    assert created["changed"] and created["created"], created.get("msg")
    assert PASSPHRASE not in created["_stdout"] and INTERMEDIATE_PASSPHRASE not in created["_stdout"]

    sans = [HOST, HOST_IP]
    policy["intermediate_passphrase"] = INTERMEDIATE_PASSPHRASE
    signed = ansible({"state": "signed", "csr": make_csr(sans), "sans": sans, "ttl": 3600, **policy}, tmp_path)
    assert signed["changed"] and signed["info"]["sans"] == [HOST_IP, HOST], signed.get("msg")
    assert signed["ca"] == created["root_certificate"]
    PolicyBuilder().store(Store([load(signed["ca"])])).build_server_verifier(x509.DNSName(HOST)).verify(
        load(signed["certificate"]), [load(signed["chain"])]
    )

    refused = ansible(
        {"state": "signed", "csr": make_csr(["evil.example.com"]), "sans": ["evil.example.com"], **policy}, tmp_path
    )
    assert refused["failed"] and "outside the allowed domains" in refused["msg"]
