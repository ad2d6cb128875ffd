"""The built-in CA's signing of a host's CSR: the key, the names and the lifetime checked first."""

from __future__ import annotations

import datetime

from ansible_collections.sevenleague.platform.plugins.module_utils.ca_store import CA, CLOCK_SKEW, UTC, hash_for

try:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pki.HAS_CRYPTOGRAPHY says so; the module reports it
    pass

from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    PKIError,
    cert_info,
    check_sans_allowed,
    general_name_str,
    iso,
    not_after,
    not_before,
    parse_sans,
    sans_of,
)
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_certs import sans_difference

MIN_TTL = 60
ACCEPTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
MIN_RSA_BITS = 2048


def key_problem(public_key) -> str | None:
    """Why a CSR's key is not acceptable, or None."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ACCEPTED_CURVES:
            return f"ECDSA curve {public_key.curve.name} is not accepted (P-256, P-384 or P-521)"
        return None
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            return f"RSA-{public_key.key_size} is too weak (at least RSA-{MIN_RSA_BITS})"
        return None
    return f"{type(public_key).__name__} keys are not accepted (ECDSA P-256/P-384/P-521 or RSA-{MIN_RSA_BITS}+)"


def _load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PKIError(f"csr is not a PEM certificate signing request: {exc}") from None


def sign_csr(
    ca: CA,
    csr_pem: str | bytes,
    sans: list[str],
    ttl: int,
    *,
    max_ttl: int,
    allowed_domains=(),
    allowed_networks=(),
    allow_wildcard: bool = False,
    now: datetime.datetime | None = None,
    check_mode: bool = False,
) -> dict:
    """Issue a certificate for `csr_pem` naming exactly `sans`, after every policy check."""
    now = now or datetime.datetime.now(UTC)
    if ttl < MIN_TTL:
        raise PKIError(f"ttl {ttl} s is below the minimum of {MIN_TTL} s")
    if ttl > max_ttl:
        raise PKIError(f"ttl {ttl} s is above the CA's maximum of {max_ttl} s (max_ttl): ask for less")

    csr = _load_csr(csr_pem)
    if not csr.is_signature_valid:
        raise PKIError("the CSR's signature does not verify: it was altered after signing, or is corrupt")
    problem = key_problem(csr.public_key())
    if problem:
        raise PKIError(f"the CSR's key is not acceptable: {problem}")

    names = parse_sans(sans)
    wanted = [general_name_str(name) for name in names]
    problems = check_sans_allowed(
        wanted,
        list(allowed_domains),
        allow_ip=bool(allowed_networks),
        allowed_networks=list(allowed_networks),
        allow_wildcard=allow_wildcard,
    )
    if problems:
        raise PKIError("refusing to sign: " + "; ".join(problems))
    requested = set(sans_of(csr))
    if requested != set(wanted):
        detail = sans_difference(requested, set(wanted))
        raise PKIError(
            f"the CSR's SANs ({', '.join(sorted(requested)) or 'none'}) differ from sans "
            f"({', '.join(sorted(wanted))}): {detail}; create the CSR for exactly these names"
        )

    if ca.intermediate_key is None:
        raise PKIError("load_ca(with_key=True) is needed to sign")
    issuer = ca.intermediate_cert
    if now >= not_after(issuer):
        raise PKIError(f"the intermediate CA expired at {iso(not_after(issuer))}: roll it over first")
    if now < not_before(issuer):
        raise PKIError(f"the intermediate CA is valid only from {iso(not_before(issuer))}: check the clock")

    start = max(now - CLOCK_SKEW, not_before(issuer))
    end = now + datetime.timedelta(seconds=ttl)
    clipped = end > not_after(issuer)
    # A certificate outliving its issuer would be rejected by clients from that moment on.
    end = min(end, not_after(issuer))
    result = {"changed": True, "ttl_clipped": clipped, "warnings": []}
    if clipped:
        result["warnings"].append(
            f"the certificate ends with the intermediate CA at {iso(end)}, "
            f"earlier than ttl asks: roll the intermediate over"
        )
    if check_mode:
        return {**result, "certificate": "", "chain": ca.pem(issuer), "ca": ca.pem(ca.root_cert), "info": {}}

    public_key = csr.public_key()
    common_name = wanted[0]
    # A CN holds at most 64 characters; without one the subject is empty and RFC 5280 makes SAN critical.
    subject = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]) if len(common_name) <= 64 else x509.Name([])
    )
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    try:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())  # 159 random bits: unpredictable, never reused
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.intermediate_key, hash_for(ca.intermediate_key))
    )
    pem = ca.pem(cert)
    return {**result, "certificate": pem, "chain": ca.pem(issuer), "ca": ca.pem(ca.root_cert), "info": cert_info(pem)}
