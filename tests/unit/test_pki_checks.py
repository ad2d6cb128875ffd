"""The PKI's deciding checks at their edges, on certificates made here to the second: the renewal
policy's boundaries, every refusal of check_issued (the one check each issued certificate passes,
whichever CA signed it), and what the built-in CA signs and puts in a certificate.

test_pki.py covers the same code through the built-in CA module; here each rule is pinned alone,
so that weakening one (a `<` for a `<=`, a dropped check) fails a test (`make mutants`)."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.sevenleague.platform.plugins.module_utils import ca_sign, pki
from ansible_collections.sevenleague.platform.plugins.module_utils.ca_store import CA

UTC = datetime.UTC
HOST = "app1.sevenleague.test"
DOMAIN = "sevenleague.test"
NETWORK = "10.213.7.0/24"
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
ONE = datetime.timedelta(seconds=1)
TOLERANCE = pki.CLOCK_SKEW_TOLERANCE


def new_key(curve=ec.SECP256R1):
    return ec.generate_private_key(curve())


def certificate(
    key,
    signer,
    *,
    subject: str,
    issuer: str,
    start: datetime.datetime,
    end: datetime.datetime,
    sans=(),
    ca: bool = False,
    ski: bool = True,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(pki.parse_sans(list(sans))), critical=False)
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return builder.sign(signer, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Chain:
    """A root, an intermediate it signed and the intermediate's key, valid a year around NOW."""

    def __init__(self, ski: bool = True, curve=ec.SECP256R1):
        self.root_key, self.key = new_key(ec.SECP384R1), new_key(curve)
        year = datetime.timedelta(days=365)
        self.root = certificate(
            self.root_key, self.root_key, subject="Root", issuer="Root", start=NOW - year, end=NOW + year, ca=True
        )
        self.intermediate = certificate(
            self.key, self.root_key, subject="Int", issuer="Root", start=NOW - year, end=NOW + year, ca=True, ski=ski
        )

    def leaf(self, key, start=None, end=None, sans=(HOST,)) -> x509.Certificate:
        start = start or NOW - datetime.timedelta(minutes=1)
        end = end or NOW + datetime.timedelta(days=1)
        return certificate(key, self.key, subject=HOST, issuer="Int", start=start, end=end, sans=sans)

    def ca(self) -> CA:
        return CA(root_cert=self.root, intermediate_cert=self.intermediate, intermediate_key=self.key)


@pytest.fixture(scope="module")
def chain():
    return Chain()


def life(start_offset: int, length: int, key=None) -> x509.Certificate:
    """A self-signed certificate starting `start_offset` s from NOW and living `length` s."""
    key = key or new_key()
    start = NOW + datetime.timedelta(seconds=start_offset)
    return certificate(
        key, key, subject=HOST, issuer=HOST, start=start, end=start + datetime.timedelta(seconds=length), sans=[HOST]
    )


# --- the renewal policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_a_renew_fraction_outside_0_and_1_is_refused(fraction):
    with pytest.raises(pki.PKIError, match="renew_fraction must lie between 0 and 1"):
        pki.renew_after(life(0, 600), fraction)


def test_a_certificate_is_expired_from_its_last_second_on():
    cert = life(-600, 600)  # ends at NOW
    assert pki.lifetime_decision(cert, NOW)[0] is True
    assert pki.lifetime_decision(cert, NOW)[1].startswith("expired at")


def test_a_certificate_starting_exactly_the_tolerance_ahead_is_fresh_not_a_clock_problem():
    cert = life(int(TOLERANCE.total_seconds()), 3600)
    renew, reason = pki.lifetime_decision(cert, NOW)
    assert (renew, reason.startswith("valid: starts at")) == (False, True), reason
    renew, reason = pki.lifetime_decision(cert, NOW - datetime.timedelta(seconds=1))
    assert renew and reason.startswith("not valid before"), reason


def test_at_its_first_second_a_certificate_is_simply_valid():
    cert = life(0, 600)
    assert pki.lifetime_decision(cert, NOW, 0.5) == (False, f"valid: renews after {pki.iso(NOW + ONE * 300)}")


def test_renewal_starts_once_less_than_the_fraction_is_left_and_says_how_much():
    cert = life(-300, 600)  # half its life left at NOW
    assert pki.lifetime_decision(cert, NOW, 0.5) == (False, f"valid: renews after {pki.iso(NOW)}")
    assert pki.lifetime_decision(cert, NOW + 60 * ONE, 0.5) == (
        True,
        "40% of the lifetime left (renew below 50%)",
    )


def test_an_expired_certificate_is_reported_as_expired_before_anything_else(chain):
    cert = chain.leaf(new_key(), start=NOW - 600 * ONE, end=NOW - ONE)
    other = Chain()
    renew, reason = pki.renewal_decision(
        pem(cert), now=NOW, wanted_sans=["other.sevenleague.test"], issuer_cert_pem=pem(other.intermediate)
    )
    assert renew and reason.startswith("expired at"), reason
    cert = chain.leaf(new_key(), start=NOW + 3600 * ONE, end=NOW + 7200 * ONE)
    renew, reason = pki.renewal_decision(
        pem(cert), now=NOW, wanted_sans=["other.sevenleague.test"], issuer_cert_pem=None
    )
    assert renew and reason.startswith("not valid before"), reason


def test_every_missing_name_is_listed(chain):
    renew, reason = pki.renewal_decision(
        pem(chain.leaf(new_key())),
        now=NOW,
        wanted_sans=[HOST, f"api.{DOMAIN}", f"web.{DOMAIN}"],
        issuer_cert_pem=pem(chain.intermediate),
    )
    assert (renew, reason) == (True, f"SANs differ: missing api.{DOMAIN}, web.{DOMAIN}")


# --- check_issued: the one check every issued certificate passes ---------------------------------


def issued(chain, key=None, **leaf):
    key = key or new_key()
    return key, chain.leaf(key, **leaf)


def test_an_issued_certificate_that_is_what_was_asked_for_passes_and_keeps_only_intermediates(chain):
    key, cert = issued(chain)
    cert_pem, chain_pem = pki.check_issued(
        b"\n  " + pem(cert) + b"\n\n",
        public_key=key.public_key(),
        wanted_sans=[HOST.upper()],
        chain_pem=pem(chain.intermediate) + pem(chain.root),
        trust_pem=pem(chain.root),
        ttl=86400,
        asked_at=NOW,
    )
    assert cert_pem == pem(cert).strip() + b"\n"
    assert chain_pem == pem(chain.intermediate)


def test_a_certificate_for_another_key_is_refused(chain):
    _, cert = issued(chain)
    with pytest.raises(pki.PKIError, match="for another key than the one the host generated: refusing certificate"):
        pki.check_issued(pem(cert), public_key=new_key().public_key(), wanted_sans=[HOST])


def test_a_certificate_for_other_names_is_refused_with_both_lists(chain):
    key, cert = issued(chain, sans=[HOST, f"api.{DOMAIN}"])
    with pytest.raises(pki.PKIError, match=rf"is for api\.{DOMAIN}, {HOST} instead of {HOST}, web\.{DOMAIN}: refusing"):
        pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST, f"web.{DOMAIN}"])
    key, cert = issued(chain, sans=())
    with pytest.raises(pki.PKIError, match=rf"is for no names instead of {HOST}"):
        pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST])


def test_a_certificate_starting_within_the_clock_tolerance_passes_and_beyond_it_is_refused(chain):
    key, cert = issued(chain, start=NOW + datetime.timedelta(minutes=2))
    pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST])
    key, cert = issued(chain, start=NOW + datetime.timedelta(minutes=20))
    with pytest.raises(pki.PKIError, match="this host's clock is .* behind"):
        pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST])


def test_an_expired_certificate_is_refused(chain):
    key, cert = issued(chain, start=NOW - 7200 * ONE, end=NOW - 3600 * ONE)
    with pytest.raises(pki.PKIError, match=r"is not valid now \(valid .* to .*; is a clock wrong\?\): refusing"):
        pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST])


def test_a_certificate_the_ca_shortened_beyond_the_tolerance_is_refused(chain):
    key, cert = issued(chain, end=NOW + 3600 * ONE - 30 * ONE)
    pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST], ttl=3600, asked_at=NOW)
    key, cert = issued(chain, end=NOW + 3600 * ONE - 120 * ONE)
    with pytest.raises(pki.PKIError, match="the CA shortened certificate .* than ttl 3600 s asks"):
        pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST], ttl=3600, asked_at=NOW)


def test_a_chain_that_does_not_reach_the_trusted_root_is_refused(chain):
    key, cert = issued(chain)
    for trust in (pem(Chain().root), pem(Chain().root) + pem(Chain().root)):
        with pytest.raises(pki.PKIError, match="the trust bundle lacks the root of the new issuer: the chain ends at"):
            pki.check_issued(
                pem(cert),
                public_key=key.public_key(),
                wanted_sans=[HOST],
                chain_pem=pem(chain.intermediate),
                trust_pem=trust,
            )
    with pytest.raises(pki.PKIError, match="the trust bundle holds no certificate"):
        pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST], trust_pem=b"")


def test_a_chain_with_two_intermediates_reaches_the_root():
    top = Chain()
    sub_key = new_key()
    year = datetime.timedelta(days=365)
    sub = certificate(sub_key, top.key, subject="Sub", issuer="Int", start=NOW - year, end=NOW + year, ca=True)
    key = new_key()
    leaf = certificate(key, sub_key, subject=HOST, issuer="Sub", start=NOW - ONE, end=NOW + year, sans=[HOST])
    assert pki.chain_problem(leaf, [top.intermediate, sub], [top.root]) is None
    assert pki.chain_problem(leaf, [sub], [top.root]).startswith("the trust bundle lacks the root")


def test_without_a_trust_bundle_the_chain_that_came_along_must_have_signed(chain):
    key, cert = issued(chain)
    with pytest.raises(pki.PKIError, match="was not signed by the chain that came with it"):
        pki.check_issued(
            pem(cert), public_key=key.public_key(), wanted_sans=[HOST], chain_pem=pem(Chain().intermediate)
        )


# --- the built-in CA: what it signs -------------------------------------------------------------


def csr(names, key=None) -> str:
    key = key or new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(pki.parse_sans(names)), critical=False)
    return (
        builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def sign(ca, request, names, ttl=3600, **options):
    options = {"max_ttl": 86400, "allowed_domains": [DOMAIN], "allowed_networks": [NETWORK], **options}
    return ca_sign.sign_csr(ca, request, names, ttl, **options)


def test_the_shortest_and_the_longest_ttl_allowed_are_signed(chain):
    assert sign(chain.ca(), csr([HOST]), [HOST], ttl=ca_sign.MIN_TTL)["certificate"]
    assert sign(chain.ca(), csr([HOST]), [HOST], ttl=86400)["certificate"]
    with pytest.raises(pki.PKIError, match="below the minimum"):
        sign(chain.ca(), csr([HOST]), [HOST], ttl=ca_sign.MIN_TTL - 1)
    with pytest.raises(pki.PKIError, match="above the CA's maximum"):
        sign(chain.ca(), csr([HOST]), [HOST], ttl=86401)


def test_a_leaf_may_sign_and_authenticate_and_nothing_else(chain):
    cert = x509.load_pem_x509_certificate(sign(chain.ca(), csr([HOST]).encode(), [HOST])["certificate"].encode())
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value == x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] and not eku.critical
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical and ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == x509.SubjectKeyIdentifier.from_public_key(chain.key.public_key()).digest
    assert cert.signature_hash_algorithm.name == "sha256"


def test_an_intermediate_without_a_key_identifier_is_named_by_its_public_key():
    bare = Chain(ski=False, curve=ec.SECP384R1)
    cert = x509.load_pem_x509_certificate(sign(bare.ca(), csr([HOST]), [HOST])["certificate"].encode())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(bare.key.public_key())
    # A P-384 intermediate signs with SHA-384.
    assert cert.signature_hash_algorithm.name == "sha384"


def test_a_name_of_64_characters_is_the_common_name_and_a_longer_one_leaves_the_subject_empty(chain):
    for length, subject_empty in ((64, False), (65, True)):
        name = "a" * (length - len(DOMAIN) - 1) + "." + DOMAIN
        cert = x509.load_pem_x509_certificate(sign(chain.ca(), csr([name]), [name])["certificate"].encode())
        assert (len(cert.subject) == 0) is subject_empty, length
        # Without a subject, RFC 5280 makes the SAN extension critical.
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical is subject_empty


def test_the_intermediates_own_validity_bounds_what_it_signs(chain):
    ca = chain.ca()
    start, end = pki.not_before(chain.intermediate), pki.not_after(chain.intermediate)
    assert sign(ca, csr([HOST]), [HOST], now=start)["certificate"]
    with pytest.raises(pki.PKIError, match="the intermediate CA is valid only from"):
        sign(ca, csr([HOST]), [HOST], now=start - ONE)
    with pytest.raises(pki.PKIError, match="the intermediate CA expired at"):
        sign(ca, csr([HOST]), [HOST], now=end)
    # Ending exactly with the intermediate is not clipping.
    exact = sign(ca, csr([HOST]), [HOST], now=end - 3600 * ONE)
    assert (exact["ttl_clipped"], exact["warnings"]) == (False, [])
    clipped = sign(ca, csr([HOST]), [HOST], now=end - 3599 * ONE)
    assert clipped["ttl_clipped"] and "ends with the intermediate CA" in clipped["warnings"][0]


def test_check_mode_says_what_it_would_sign_with_and_signs_nothing(chain):
    result = sign(chain.ca(), csr([HOST]), [HOST], check_mode=True)
    assert result == {
        "changed": True,
        "ttl_clipped": False,
        "warnings": [],
        "certificate": "",
        "chain": chain.ca().pem(chain.intermediate),
        "ca": chain.ca().pem(chain.root),
        "info": {},
    }


def test_a_ca_loaded_without_its_key_cannot_sign(chain):
    with pytest.raises(pki.PKIError, match=r"^load_ca\(with_key=True\) is needed to sign$"):
        sign(CA(root_cert=chain.root, intermediate_cert=chain.intermediate), csr([HOST]), [HOST])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (ed25519.Ed25519PrivateKey.generate(), r"Ed25519PublicKey keys are not accepted"),
        (rsa.generate_private_key(65537, 1024), r"RSA-1024 is too weak \(at least RSA-2048\)"),
        (ec.generate_private_key(ec.SECP256K1()), r"ECDSA curve secp256k1 is not accepted"),
    ],
    ids=["ed25519", "rsa1024", "secp256k1"],
)
def test_weak_or_unknown_keys_are_refused_by_name(chain, key, message):
    with pytest.raises(pki.PKIError, match=f"the CSR's key is not acceptable: {message}"):
        sign(chain.ca(), csr([HOST], key), [HOST])


def test_a_csr_for_other_names_is_refused_with_what_it_adds_and_lacks(chain):
    asked = [HOST, f"a.{DOMAIN}", f"b.{DOMAIN}"]
    wanted = [HOST, f"c.{DOMAIN}", f"d.{DOMAIN}"]
    with pytest.raises(pki.PKIError) as refused:
        sign(chain.ca(), csr(asked), wanted)
    assert str(refused.value) == (
        f"the CSR's SANs (a.{DOMAIN}, {HOST}, b.{DOMAIN}) differ from sans ({HOST}, c.{DOMAIN}, d.{DOMAIN}): "
        f"it asks also for a.{DOMAIN}, b.{DOMAIN}; it lacks c.{DOMAIN}, d.{DOMAIN}; "
        f"create the CSR for exactly these names"
    )


# --- what the refusals and reasons say -----------------------------------------------------------

BROKEN_PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def test_an_unreadable_input_of_check_issued_is_named(chain):
    key, cert = issued(chain)
    checks = {
        "issued certificate": {"cert_pem": BROKEN_PEM},
        "CA chain": {"chain_pem": BROKEN_PEM},
        "trust bundle": {"trust_pem": BROKEN_PEM},
    }
    for what, broken in checks.items():
        arguments = {"cert_pem": pem(cert), "public_key": key.public_key(), "wanted_sans": [HOST], **broken}
        with pytest.raises(pki.PKIError, match=f"^the {what} is not a PEM certificate"):
            pki.check_issued(**arguments)


def test_a_refusal_names_the_certificate_by_its_serial(chain):
    _, cert = issued(chain)
    serial = pki.serial_hex(cert.serial_number)
    with pytest.raises(pki.PKIError, match=f"refusing certificate {serial}$"):
        pki.check_issued(pem(cert), public_key=new_key().public_key(), wanted_sans=[HOST])


def test_the_ttl_is_checked_only_against_a_request_time(chain):
    key, cert = issued(chain, end=NOW + 600 * ONE)
    pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST], ttl=86400, asked_at=None)
    pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST], ttl=None, asked_at=NOW)


def test_a_certificate_shortened_by_exactly_the_tolerance_passes(chain):
    key, cert = issued(chain, end=NOW + 3600 * ONE - pki.TTL_TOLERANCE)
    pki.check_issued(pem(cert), public_key=key.public_key(), wanted_sans=[HOST], ttl=3600, asked_at=NOW)


def test_every_intermediate_of_the_chain_is_kept_in_order():
    top = Chain()
    sub_key = new_key()
    year = datetime.timedelta(days=365)
    sub = certificate(sub_key, top.key, subject="Sub", issuer="Int", start=NOW - year, end=NOW + year, ca=True)
    key = new_key()
    leaf = certificate(key, sub_key, subject=HOST, issuer="Sub", start=NOW - ONE, end=NOW + year, sans=[HOST])
    _, chain_pem = pki.check_issued(
        pem(leaf),
        public_key=key.public_key(),
        wanted_sans=[HOST],
        chain_pem=pem(sub) + pem(top.intermediate) + pem(top.root),
        trust_pem=pem(top.root),
    )
    assert chain_pem == pem(sub) + pem(top.intermediate)


def test_a_certificate_under_the_issuers_name_but_not_its_signature_is_named(chain):
    impostor = new_key()
    cert = certificate(new_key(), impostor, subject=HOST, issuer="Int", start=NOW - ONE, end=NOW + 3600 * ONE)
    assert pki.issuer_problem(cert, chain.intermediate) == (
        "issuer changed: the signature does not verify with the current CA's key"
    )


def test_the_reasons_give_the_renewal_point_and_the_share_left_of_the_policy_in_use():
    ahead = life(60, 1000)
    renew, reason = pki.lifetime_decision(ahead, NOW, 0.9)
    assert not renew and reason.endswith(f"renews after {pki.iso(NOW + 160 * ONE)}"), reason
    cert = life(-195, 1000)  # 80.5 % left at NOW
    assert pki.lifetime_decision(cert, NOW, 0.9) == (True, "80% of the lifetime left (renew below 90%)")


def test_a_certificate_due_for_renewal_that_also_names_the_wrong_hosts_says_so(chain):
    cert = chain.leaf(new_key(), start=NOW - 3000 * ONE, end=NOW + 600 * ONE)
    renew, reason = pki.renewal_decision(
        pem(cert), now=NOW, wanted_sans=[f"web.{DOMAIN}"], issuer_cert_pem=pem(chain.intermediate)
    )
    assert (renew, reason) == (True, f"SANs differ: missing web.{DOMAIN}; extra {HOST}")


def test_an_unreadable_issuer_is_named_as_the_issuer_certificate(chain):
    with pytest.raises(pki.PKIError, match="^the issuer certificate is not a PEM certificate"):
        pki.renewal_decision(pem(chain.leaf(new_key())), now=NOW, wanted_sans=[HOST], issuer_cert_pem=BROKEN_PEM)
