"""Certificate policy shared by every CA backend: renewal, the checks of an issued certificate, facts and metrics.

The certificate and name helpers it builds on are pki_certs'; this module's __all__ is the API
the modules and the hosts' tool use.

Plain functions on cryptography objects, so the built-in CA module, the OpenBao backend and
pytest all apply exactly the same rules. Times are timezone-aware UTC datetimes throughout.
Works with the cryptography of Debian 12 (38) as well as the controller's pinned one, because a
module using it may run on a host as well as on the controller.
"""

from __future__ import annotations

import datetime

from ansible_collections.sevenleague.platform.plugins.module_utils.pki_certs import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    PKIError,
    check_sans_allowed,
    general_name_str,
    is_self_signed,
    is_signed_by,
    iso,
    load_certificate,
    normalize_san,
    not_after,
    not_before,
    parse_iso,
    parse_sans,
    require_aware,
    sans_of,
    serial_hex,
    spki,
    split_pem,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
except ImportError:  # pki_certs.HAS_CRYPTOGRAPHY says so; modules report it
    pass

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


def _check_fraction(renew_fraction: float) -> None:
    if not 0 < renew_fraction < 1:
        raise PKIError(f"renew_fraction must lie between 0 and 1 (exclusive), got {renew_fraction}")


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
    now = require_aware(now)
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
    now = require_aware(now)
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
    if spki(cert.public_key()) != spki(public_key):
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
        asked_end = require_aware(asked_at) + datetime.timedelta(seconds=ttl)
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
    ahead = (parse_iso(info["not_before"]) - require_aware(now)).total_seconds()
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
            epoch = int(parse_iso(info[field]).timestamp())
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
