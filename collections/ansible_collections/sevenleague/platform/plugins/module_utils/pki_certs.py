"""Certificates, names and PEM: the plain helpers under the PKI policy (pki.py).

Shipped to hosts with pki.py (the sevenleague-host package); cryptography 38 (Debian 12) and newer.
"""

from __future__ import annotations

import datetime
import ipaddress
import re

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
except ImportError as exc:  # modules report it with missing_required_lib() instead of a traceback
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

UTC = datetime.UTC
# RFC 1035 label, as an A-label (IDNs must be passed punycode-encoded, as certificates store them).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class PKIError(Exception):
    """Input or state the operator must fix; the message names the cause."""


# --- loading, and cryptography versions -------------------------------------------------------


def load_certificate(pem: bytes | str, what: str = "certificate") -> x509.Certificate:
    """The first certificate of a PEM blob (a full chain is accepted: the leaf comes first)."""
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PKIError(f"the {what} is not a PEM certificate: {exc}") from None


def not_before(cert: x509.Certificate) -> datetime.datetime:
    # not_valid_before_utc appeared in cryptography 42; Debian 12 ships 38 (naive UTC only).
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=UTC)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=UTC)


def crl_updates(crl) -> tuple[datetime.datetime, datetime.datetime | None]:
    """A CRL's thisUpdate and nextUpdate, UTC-aware, whatever the cryptography version (Debian 12 has 38)."""
    last = getattr(crl, "last_update_utc", None) or crl.last_update.replace(tzinfo=UTC)
    if hasattr(crl, "next_update_utc"):
        return last, crl.next_update_utc
    return last, crl.next_update.replace(tzinfo=UTC) if crl.next_update is not None else None


def is_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s name and key signed `cert`."""
    if cert.issuer != issuer.subject:
        return False
    if hasattr(cert, "verify_directly_issued_by"):  # cryptography >= 40
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True
    key = issuer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def require_aware(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (datetime.now(timezone.utc))")
    return now.astimezone(UTC)


def iso(moment: datetime.datetime) -> str:
    """ISO 8601 in UTC with a Z, to the second: what facts, logs and people read."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- SANs -------------------------------------------------------------------------------------


def normalize_san(value: str) -> str:
    """IPs in `ipaddress` canonical form, DNS names lowercased without a trailing dot."""
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower().rstrip(".")


def _dns_name_problem(name: str) -> str | None:
    if not name:
        return "an empty name"
    if len(name) > 253:
        return f"{name[:40]}... is longer than 253 characters"
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return f"{name} is a wildcard on a top-level name"
    bad = [label for label in labels if not _LABEL.match(label)]
    if bad:
        return f"{name} is not a valid DNS name (label {bad[0]!r}; IDNs must be given in punycode)"
    return None


def parse_sans(sans: list[str]) -> list[x509.GeneralName]:
    """GeneralNames for `sans`, in order without duplicates: IP addresses, else DNS names."""
    names, seen = [], set()
    for raw in sans:
        value = normalize_san(raw)
        if value in seen:
            continue
        seen.add(value)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
            continue
        except ValueError:
            pass
        problem = _dns_name_problem(value)
        if problem:
            raise PKIError(f"SAN {raw!r}: {problem}")
        names.append(x509.DNSName(value))
    return names


def general_name_str(name: x509.GeneralName) -> str:
    """A SAN as a comparable string; other name types keep a prefix so they never match a DNS name."""
    if isinstance(name, (x509.IPAddress, x509.DNSName)):
        return normalize_san(name.value)
    return f"{type(name).__name__}:{name.value}"


def sans_of(obj) -> list[str]:
    """Normalized SANs of a certificate or CSR, sorted (empty without the extension)."""
    try:
        ext = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return sorted({general_name_str(name) for name in ext.value})


def _in_domain(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def sans_difference(requested: set[str], wanted: set[str], implied: frozenset[str] | set[str] = frozenset()) -> str:
    """What a CSR asks for beyond `wanted` and what it lacks (`implied` names count as present)."""
    extra, missing = sorted(requested - wanted), sorted(wanted - requested - set(implied))
    parts = (extra and "it asks also for " + ", ".join(extra), missing and "it lacks " + ", ".join(missing))
    return "; ".join(part for part in parts if part)


def check_sans_allowed(
    sans: list[str],
    allowed_domains: list[str],
    allow_ip: bool,
    allowed_networks: list[str] | None = None,
    allow_wildcard: bool = False,
) -> list[str]:
    """Problems with `sans` under the CA's naming policy; empty when every SAN is allowed.

    A DNS name must equal an allowed domain or lie below one (RFC 5280 dNSName subtree semantics,
    which the CA's name constraints also enforce). An IP needs allow_ip and, when
    allowed_networks is given, must lie in one of them.
    """
    domains = [domain.strip().lower().strip(".") for domain in allowed_domains if domain.strip(" .")]
    networks = [ipaddress.ip_network(net, strict=False) for net in (allowed_networks or [])]
    problems = []
    if not sans:
        problems.append("no SANs requested")
    for raw in sans:
        value = normalize_san(raw)
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is not None:
            if not allow_ip:
                problems.append(f"IP SAN {value} is not allowed (this CA issues IP SANs only for allowed_networks)")
            elif networks and not any(address in net for net in networks):
                problems.append(
                    f"IP SAN {value} is outside the allowed networks ({', '.join(str(net) for net in networks)})"
                )
            continue
        problem = _dns_name_problem(value)
        if problem:
            problems.append(f"SAN {raw!r}: {problem}")
            continue
        if value.startswith("*.") and not allow_wildcard:
            problems.append(f"wildcard SAN {value} is not allowed (allow_wildcard is off)")
            continue
        base = value[2:] if value.startswith("*.") else value
        if not domains:
            problems.append(f"SAN {value} cannot be checked: no allowed domains are configured")
        elif not any(_in_domain(base, domain) for domain in domains):
            problems.append(f"SAN {value} is outside the allowed domains ({', '.join(domains)})")
    return problems


# --- checks on an issued certificate ----------------------------------------------------------


def split_pem(pem: bytes | str) -> list[bytes]:
    """Each certificate of a PEM bundle, in order (cryptography 38 has no load_pem_x509_certificates)."""
    if isinstance(pem, str):
        pem = pem.encode()
    return [block + b"\n" for block in _PEM_CERT.findall(pem or b"")]


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and is_signed_by(cert, cert)


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- facts and metrics ------------------------------------------------------------------------


def serial_hex(serial: int) -> str:
    """Lowercase hex in whole bytes, as `openssl x509 -serial` prints it (without the case)."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text
