"""The built-in CA's revocation: the certificates it issued, those revoked, and its CRL.

Beside the CA's files (ca_store), in the same folder on the controller:

- issued/<serial>.pem: every certificate the intermediate signed, so a host's certificates can be
  listed and revoked (the counterpart of OpenBao's stored certificates); dropped once expired;
- revoked.json: {serial: {"revoked": ISO time, "not_after": ISO time}} of certificates revoked and
  not yet expired;
- crl.pem: the intermediate's CRL (PEM), listing them, with a nextUpdate `lifetime` seconds ahead.

The CRL is made again only when the revoked set changed or less than half its life is left, so a
converge that revokes nothing leaves it as it was. The root signs no CRL: hosts check the leaf only
(Envoy's only_verify_leaf_cert_crl), and the root revokes no intermediate (a rollover replaces it).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID
except ImportError:  # pki.HAS_CRYPTOGRAPHY says so; the module reports it
    pass

from ansible_collections.sevenleague.platform.plugins.module_utils.ca_store import CA, _locked, hash_for
from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import read_or_none, replace_file
from ansible_collections.sevenleague.platform.plugins.module_utils.pki import PKIError, iso, not_after
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_certs import crl_updates

UTC = datetime.UTC
ISSUED = "issued"
REVOKED = "revoked.json"
CRL = "crl.pem"
# A CRL is made again once less than this share of its life is left.
REFRESH_FRACTION = 0.5


def serial_hex(value: int) -> str:
    """Lowercase hex in whole bytes, as Envoy and OpenBao print serials (without colons)."""
    text = format(value, "x")
    return text if len(text) % 2 == 0 else "0" + text


def record_issued(ca_dir: str, pem: str) -> str:
    """Keep a certificate the CA just signed under issued/; returns its serial."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    folder = os.path.join(ca_dir, ISSUED)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    serial = serial_hex(cert.serial_number)
    replace_file(os.path.join(folder, f"{serial}.pem"), pem.encode(), 0o600)
    return serial


def common_name(cert) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def issued_of(ca_dir: str, names, now: datetime.datetime) -> list[str]:
    """Serials of the still-valid issued certificates whose CN is one of `names`."""
    folder = os.path.join(ca_dir, ISSUED)
    wanted = set(names or [])
    found = []
    if not wanted or not os.path.isdir(folder):
        return found
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".pem"):
            continue
        try:
            cert = x509.load_pem_x509_certificate(read_or_none(os.path.join(folder, entry)) or b"")
        except ValueError:
            continue
        if common_name(cert) in wanted and not_after(cert) > now:
            found.append(serial_hex(cert.serial_number))
    return found


def issued_names(ca_dir: str) -> list[str]:
    """The CNs of every certificate still kept under issued/: the hosts this CA knows."""
    folder = os.path.join(ca_dir, ISSUED)
    names = set()
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            try:
                names.add(common_name(x509.load_pem_x509_certificate(read_or_none(os.path.join(folder, entry)) or b"")))
            except ValueError:
                continue
    return sorted(names - {""})


def _normal_serial(serial: str) -> str:
    text = serial.lower().replace(":", "").replace("-", "").strip()
    try:
        return serial_hex(int(text, 16))
    except ValueError:
        raise PKIError(f"{serial!r} is not a certificate serial number (hex)") from None


def read_revoked(ca_dir: str) -> dict:
    data = read_or_none(os.path.join(ca_dir, REVOKED))
    if data is None:
        return {}
    try:
        revoked = json.loads(data)
    except ValueError as exc:
        raise PKIError(f"{os.path.join(ca_dir, REVOKED)} is not JSON: {exc}") from None
    if not isinstance(revoked, dict):
        raise PKIError(f"{os.path.join(ca_dir, REVOKED)} must hold a JSON object")
    return revoked


def next_revoked(ca_dir: str, serials, now: datetime.datetime) -> tuple[dict, list[str]]:
    """The revoked set after adding `serials`, without the certificates expired since; and the serials new in it."""
    revoked = {s: v for s, v in read_revoked(ca_dir).items() if datetime.datetime.fromisoformat(v["not_after"]) > now}
    added = []
    for serial in serials:
        serial = _normal_serial(serial)
        if serial in revoked:
            continue
        pem = read_or_none(os.path.join(ca_dir, ISSUED, f"{serial}.pem"))
        # A certificate the store never kept is listed for the longest life the CA grants: its end is unknown.
        end = not_after(x509.load_pem_x509_certificate(pem)) if pem else now + datetime.timedelta(days=400)
        if end <= now:
            continue
        revoked[serial] = {"revoked": iso(now), "not_after": iso(end)}
        added.append(serial)
    return revoked, added


def build_crl(ca: CA, revoked: dict, now: datetime.datetime, lifetime: int) -> str:
    """The intermediate's CRL of `revoked`, valid from now for `lifetime` seconds, PEM."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.intermediate_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(seconds=lifetime))
    )
    try:
        ski = ca.intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    except x509.ExtensionNotFound:
        pass
    number = int(now.timestamp())
    builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial, entry in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(datetime.datetime.fromisoformat(entry["revoked"]))
            .build()
        )
    crl = builder.sign(ca.intermediate_key, hash_for(ca.intermediate_key))
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def crl_due(pem: bytes | None, ca: CA, now: datetime.datetime) -> str | None:
    """Why the CRL on file must be made again, or None while it is good."""
    if not pem:
        return "there is none"
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError:
        return "it does not parse"
    if crl.issuer != ca.intermediate_cert.subject or not crl.is_signature_valid(ca.intermediate_cert.public_key()):
        return "another intermediate signed it"
    start, end = crl_updates(crl)
    if end is None or now >= start + (end - start) * REFRESH_FRACTION:
        return "more than half of its life is over"
    return None


def ensure_crl(ca_dir: str, ca: CA, *, revoke=(), revoke_names=(), lifetime: int, check_mode: bool, now=None) -> dict:
    """Revoke the given serials and every valid certificate issued to `revoke_names`; keep crl.pem current."""
    now = now or datetime.datetime.now(UTC)
    if ca.intermediate_key is None:
        raise PKIError("load_ca(with_key=True) is needed to sign a CRL")
    if now + datetime.timedelta(seconds=lifetime) > not_after(ca.intermediate_cert):
        lifetime = max(60, int((not_after(ca.intermediate_cert) - now).total_seconds()))
    path = os.path.join(ca_dir, CRL)
    with contextlib.nullcontext() if check_mode else _locked(ca_dir):
        serials = list(revoke) + issued_of(ca_dir, revoke_names, now)
        revoked, added = next_revoked(ca_dir, serials, now)
        current = read_or_none(path)
        why = "certificates were revoked" if added else crl_due(current, ca, now)
        if why is None and set(revoked) != set(read_revoked(ca_dir)):
            why = "expired certificates leave it"
        if why is None:
            return {"changed": False, "crl": current.decode(), "revoked": [], "reason": "up to date"}
        if check_mode:
            return {"changed": True, "crl": (current or b"").decode(), "revoked": added, "reason": why}
        pem = build_crl(ca, revoked, now, lifetime)
        replace_file(
            os.path.join(ca_dir, REVOKED), (json.dumps(revoked, indent=1, sort_keys=True) + "\n").encode(), 0o600
        )
        replace_file(path, pem.encode(), 0o644)
        _prune_issued(ca_dir, now)
    return {"changed": True, "crl": pem, "revoked": added, "reason": why}


def _prune_issued(ca_dir: str, now: datetime.datetime) -> None:
    folder = os.path.join(ca_dir, ISSUED)
    if not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        try:
            if not_after(x509.load_pem_x509_certificate(read_or_none(path) or b"")) <= now:
                os.unlink(path)
        except (ValueError, FileNotFoundError):
            continue
