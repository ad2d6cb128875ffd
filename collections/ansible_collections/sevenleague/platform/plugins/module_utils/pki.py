"""Certificate policy shared by every CA backend: renewal, SAN rules, facts and metrics.

Plain functions on cryptography objects, so the built-in CA module, the OpenBao backend and
pytest all apply exactly the same rules. Times are timezone-aware UTC datetimes throughout.
Works with the cryptography of Debian 12 (38) as well as the controller's pinned one, because a
module using it may run on a host as well as on the controller.
"""

from __future__ import annotations

import datetime
import ipaddress
import re

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
except ImportError as exc:  # modules report it with missing_required_lib() instead of a traceback
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

UTC = datetime.UTC
# The renewal policy's constants, for every backend and both renewal paths.
# Renew when less than a third of the lifetime is left: a 24 h certificate renews after 16 h,
# so a host has 8 h of retries before anything expires.
DEFAULT_RENEW_FRACTION = 1 / 3
# A CA backdates and rounds; the request and the clocks differ a little. An issued certificate
# that ends more than this before `asked_at + ttl` was shortened by the CA.
TTL_TOLERANCE = datetime.timedelta(seconds=60)
# How far a host's clock may run behind its CA's. OpenBao backdates a certificate's start by
# 30 s, the built-in CA by this tolerance: a host up to this far behind treats a certificate
# that starts in its future as fresh, instead of renewing it on every timer run. Beyond it the
# host refuses the certificate and says that its clock is wrong: a renewal cannot fix a clock.
CLOCK_SKEW_TOLERANCE = datetime.timedelta(minutes=5)
METRIC_PREFIX = "sevenleague_certificate"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# RFC 1035 label, as an A-label (IDNs must be passed punycode-encoded, as certificates store them).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


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


def _require_aware(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (datetime.now(timezone.utc))")
    return now.astimezone(UTC)


def _check_fraction(renew_fraction: float) -> None:
    if not 0 < renew_fraction < 1:
        raise PKIError(f"renew_fraction must lie between 0 and 1 (exclusive), got {renew_fraction}")


def iso(moment: datetime.datetime) -> str:
    """ISO 8601 in UTC with a Z, to the second: what facts, logs and people read."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime.datetime:
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


# --- lifetime and renewal ---------------------------------------------------------------------


def renew_after(cert: x509.Certificate, renew_fraction: float = DEFAULT_RENEW_FRACTION) -> datetime.datetime:
    """The moment from which less than `renew_fraction` of the lifetime remains."""
    _check_fraction(renew_fraction)
    start, end = not_before(cert), not_after(cert)
    return start + (end - start) * (1 - renew_fraction)


def clock_behind(start: datetime.datetime, now: datetime.datetime) -> str:
    """What to say about a certificate that starts further in this host's future than the tolerance."""
    return (
        f"not valid before {iso(start)}: this host's clock is {int((start - now).total_seconds())} s behind "
        f"its CA's, more than the {int(CLOCK_SKEW_TOLERANCE.total_seconds())} s clock-skew tolerance; "
        f"a new certificate would start as late: fix the host's time sync (chronyc tracking)"
    )


def lifetime_decision(
    cert: x509.Certificate, now: datetime.datetime, renew_fraction: float = DEFAULT_RENEW_FRACTION
) -> tuple[bool, str]:
    """(renew?, reason) from the validity period alone."""
    _check_fraction(renew_fraction)
    now = _require_aware(now)
    start, end = not_before(cert), not_after(cert)
    if now >= end:
        return True, f"expired at {iso(end)}"
    if now < start - CLOCK_SKEW_TOLERANCE:
        return True, clock_behind(start, now)
    if now < start:
        # Issued moments ago by a CA whose clock runs a little ahead of this one: fresh.
        return False, (
            f"valid: starts at {iso(start)}, {int((start - now).total_seconds())} s ahead of this "
            f"host's clock (within the {int(CLOCK_SKEW_TOLERANCE.total_seconds())} s clock-skew "
            f"tolerance); renews after {iso(renew_after(cert, renew_fraction))}"
        )
    left = (end - now) / (end - start)
    if left < renew_fraction:
        return True, (f"{int(left * 100)}% of the lifetime left (renew below {round(renew_fraction * 100)}%)")
    return False, f"valid: renews after {iso(renew_after(cert, renew_fraction))}"


def _key_id(cert: x509.Certificate, ext_class) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(ext_class).value
    except x509.ExtensionNotFound:
        return None
    return value.key_identifier if ext_class is x509.AuthorityKeyIdentifier else value.digest


def issuer_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Why `issuer` did not issue `cert`, or None when it did."""
    if cert.issuer != issuer.subject:
        return (
            f"issuer changed: issued by {cert.issuer.rfc4514_string()}, the CA is now {issuer.subject.rfc4514_string()}"
        )
    # Same name, new key (an intermediate rollover keeps its subject): the key ids tell them apart.
    aki, ski = _key_id(cert, x509.AuthorityKeyIdentifier), _key_id(issuer, x509.SubjectKeyIdentifier)
    if aki is not None and ski is not None and aki != ski:
        return f"issuer changed: issued under key id {aki.hex()}, the CA's key id is now {ski.hex()}"
    if not is_signed_by(cert, issuer):
        return "issuer changed: the signature does not verify with the current CA's key"
    return None


def renewal_decision(
    cert_pem: bytes | str | None,
    *,
    now: datetime.datetime,
    wanted_sans: list[str],
    issuer_cert_pem: bytes | str | None,
    renew_fraction: float = DEFAULT_RENEW_FRACTION,
) -> tuple[bool, str]:
    """(renew?, reason) for a host's current certificate; the one renewal policy of every backend.

    Renew when there is no usable certificate, when it expired or less than `renew_fraction` of its
    lifetime remains, when its SANs differ from `wanted_sans`, or when `issuer_cert_pem` (the CA
    that signs today) did not issue it. Otherwise nothing changes.
    """
    _check_fraction(renew_fraction)
    now = _require_aware(now)
    if cert_pem is None or not cert_pem.strip():
        return True, "no certificate"
    try:
        cert = load_certificate(cert_pem, "current certificate")
    except PKIError as exc:
        return True, str(exc)
    renew, reason = lifetime_decision(cert, now, renew_fraction)
    if renew and reason.startswith(("expired", "not valid before")):
        return renew, reason
    if issuer_cert_pem:
        problem = issuer_problem(cert, load_certificate(issuer_cert_pem, "issuer certificate"))
        if problem:
            return True, problem
    have, want = set(sans_of(cert)), {normalize_san(san) for san in wanted_sans}
    if have != want:
        parts = []
        if want - have:
            parts.append("missing " + ", ".join(sorted(want - have)))
        if have - want:
            parts.append("extra " + ", ".join(sorted(have - want)))
        return True, "SANs differ: " + "; ".join(parts)
    return renew, reason


# --- checks on an issued certificate ----------------------------------------------------------


def split_pem(pem: bytes | str) -> list[bytes]:
    """Each certificate of a PEM bundle, in order (cryptography 38 has no load_pem_x509_certificates)."""
    if isinstance(pem, str):
        pem = pem.encode()
    return [block + b"\n" for block in _PEM_CERT.findall(pem or b"")]


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and is_signed_by(cert, cert)


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def chain_problem(
    cert: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate]
) -> str | None:
    """Why `cert` does not chain through `intermediates` to one of `anchors`; None when it does.

    Signatures only: name constraints and dates are what peers check with their own libraries,
    but a root missing from the bundle would make every peer reject the certificate at once.
    """
    current, unused = cert, list(intermediates)
    for _ in range(len(intermediates) + 1):
        if any(is_signed_by(current, anchor) for anchor in anchors):
            return None
        parent = next((candidate for candidate in unused if is_signed_by(current, candidate)), None)
        if parent is None:
            break
        unused.remove(parent)
        current = parent
    return (
        f"the trust bundle lacks the root of the new issuer: the chain ends at "
        f"{current.subject.rfc4514_string()}, issued by {current.issuer.rfc4514_string()}, which the bundle "
        f"does not hold; run site.yml (or the rotate-ca playbook) so hosts trust the new root first"
    )


def check_issued(
    cert_pem: bytes | str,
    *,
    public_key,
    wanted_sans: list[str],
    chain_pem: bytes | str = b"",
    trust_pem: bytes | str | None = None,
    ttl: int | None = None,
    asked_at: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """(cert.pem, chain.pem) once an issued certificate is exactly what was asked for; else PKIError.

    The one check every issuance passes, whichever CA signed and whoever asked: the certificate is
    for `public_key` (the key the host generated) and for exactly `wanted_sans`; it is valid now;
    it lives `ttl` seconds from `asked_at` (a CA may shorten a TTL above its maximum with a mere
    warning); it chains through the intermediates of `chain_pem` to a root of `trust_pem`. Roots
    in `chain_pem` are dropped: they belong in the trust bundle, not in chain.pem.
    """
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode()
    cert_pem = cert_pem.strip() + b"\n"
    cert = load_certificate(cert_pem, "issued certificate")
    serial = serial_hex(cert.serial_number)
    refuse = f"refusing certificate {serial}"
    if _spki(cert.public_key()) != _spki(public_key):
        raise PKIError(f"the certificate is for another key than the one the host generated: {refuse}")
    have, want = sans_of(cert), sorted({normalize_san(name) for name in wanted_sans})
    if have != want:
        raise PKIError(
            f"certificate {serial} is for {', '.join(have) or 'no names'} instead of {', '.join(want)}: "
            f"{refuse}; check the CA role's names (use_csr_sans, allowed names)"
        )
    now = datetime.datetime.now(UTC)
    if not_before(cert) > now + CLOCK_SKEW_TOLERANCE:
        raise PKIError(f"certificate {serial} is {clock_behind(not_before(cert), now)}: {refuse}")
    if not_after(cert) <= now:
        raise PKIError(
            f"certificate {serial} is not valid now (valid {iso(not_before(cert))} to "
            f"{iso(not_after(cert))}; is a clock wrong?): {refuse}"
        )
    if ttl and asked_at is not None:
        asked_end = _require_aware(asked_at) + datetime.timedelta(seconds=ttl)
        if not_after(cert) < asked_end - TTL_TOLERANCE:
            raise PKIError(
                f"the CA shortened certificate {serial}: it ends at {iso(not_after(cert))}, earlier than "
                f"ttl {ttl} s asks ({iso(asked_end)}); the CA role's max_ttl or the issuer's own expiry "
                f"is shorter: {refuse}; lower the ttl or raise that maximum"
            )
    intermediates, chain_out = [], b""
    for block in split_pem(chain_pem):
        ca = load_certificate(block, "CA chain")
        if not is_self_signed(ca):
            intermediates.append(ca)
            chain_out += block
    if trust_pem is not None:
        anchors = [load_certificate(block, "trust bundle") for block in split_pem(trust_pem)]
        if not anchors:
            raise PKIError(f"the trust bundle holds no certificate: {refuse}")
        problem = chain_problem(cert, intermediates, anchors)
        if problem:
            raise PKIError(f"certificate {serial}: {problem}")
    elif intermediates and not any(is_signed_by(cert, ca) for ca in intermediates):
        raise PKIError(f"certificate {serial} was not signed by the chain that came with it: {refuse}")
    return cert_pem, chain_out


# --- facts and metrics ------------------------------------------------------------------------


def serial_hex(serial: int) -> str:
    """Lowercase hex in whole bytes, as `openssl x509 -serial` prints it (without the case)."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


def cert_info(cert_pem: bytes | str) -> dict:
    """What facts, logs and the node_exporter textfile say about a certificate."""
    cert = load_certificate(cert_pem)
    return {
        "serial": serial_hex(cert.serial_number),
        "not_before": iso(not_before(cert)),
        "not_after": iso(not_after(cert)),
        "sans": sans_of(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "subject": cert.subject.rfc4514_string(),
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def _label_value(value: str) -> str:
    # Prometheus text format: backslash, double quote and newline are escaped in label values.
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_METRICS = (
    ("not_after", "Unix time after which the certificate is no longer valid."),
    ("not_before", "Unix time from which the certificate is valid."),
)
_CLOCK_METRIC = f"{METRIC_PREFIX}_clock_behind_seconds"


def clock_behind_seconds(info: dict, now: datetime.datetime) -> int:
    """How far the certificate starts in this host's future, when that is beyond the clock-skew
    tolerance (this host's clock is behind its CA's by at least as much); 0 within it."""
    ahead = (_parse_iso(info["not_before"]) - _require_aware(now)).total_seconds()
    return int(ahead) if ahead > CLOCK_SKEW_TOLERANCE.total_seconds() else 0


def textfile_metrics(infos: list[tuple[str, dict]], now: datetime.datetime | None = None) -> str:
    """A node_exporter textfile: per (name, cert_info) pair, its bounds and the clock check, sorted.

    Labelled by the certificate's name only: a serial label would start new series at every
    renewal. Sorted output, and a clock value that stays 0 within the tolerance, keep the file
    byte-identical between runs, so writing it changes nothing while the certificates stay the same.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    rows = sorted((str(name), info) for name, info in infos)
    lines = []
    for field, help_text in _METRICS:
        metric = f"{METRIC_PREFIX}_{field}_seconds"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} gauge")
        for name, info in rows:
            epoch = int(_parse_iso(info[field]).timestamp())
            lines.append(f'{metric}{{name="{_label_value(name)}"}} {epoch}')
    lines.append(
        f"# HELP {_CLOCK_METRIC} Seconds this host's clock is behind its CA's, as the certificate's "
        f"start shows, when beyond the {int(CLOCK_SKEW_TOLERANCE.total_seconds())} s tolerance; else 0."
    )
    lines.append(f"# TYPE {_CLOCK_METRIC} gauge")
    for name, info in rows:
        lines.append(f'{_CLOCK_METRIC}{{name="{_label_value(name)}"}} {clock_behind_seconds(info, now)}')
    return "\n".join(lines) + "\n"


__all__ = [
    "CLOCK_SKEW_TOLERANCE",
    "CRYPTOGRAPHY_IMPORT_ERROR",
    "DEFAULT_RENEW_FRACTION",
    "HAS_CRYPTOGRAPHY",
    "TTL_TOLERANCE",
    "PKIError",
    "cert_info",
    "chain_problem",
    "check_issued",
    "check_sans_allowed",
    "clock_behind_seconds",
    "general_name_str",
    "is_self_signed",
    "is_signed_by",
    "iso",
    "issuer_problem",
    "lifetime_decision",
    "load_certificate",
    "normalize_san",
    "not_after",
    "not_before",
    "parse_sans",
    "renew_after",
    "renewal_decision",
    "sans_of",
    "serial_hex",
    "split_pem",
    "textfile_metrics",
]
