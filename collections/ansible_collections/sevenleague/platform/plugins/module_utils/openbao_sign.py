"""Signing a host's CSR through OpenBao's PKI (`<mount>/sign/<role>`), checked before and after.

The logic of the pki_openbao_sign module: the CSR must ask for exactly the names wanted, the TTL
must be one the role will not shorten, and the issued certificate passes pki.check_issued.
"""

from __future__ import annotations

import datetime
import ipaddress
import re

from ansible_collections.sevenleague.platform.plugins.module_utils.openbao import SEALED_HINT, OpenBao, OpenBaoError
from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    HAS_CRYPTOGRAPHY,
    PKIError,
    cert_info,
    check_issued,
    normalize_san,
    parse_sans,
    sans_of,
)
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_certs import sans_difference

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

UTC = datetime.UTC
MIN_TTL = 60
_DURATION = re.compile(r"(\d+)([dhms])")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


# --- inputs -----------------------------------------------------------------------------------


def parse_ttl(ttl) -> int | None:
    """Seconds from `3600`, `"3600"` or a duration such as `"1h30m"`; None when not given."""
    if ttl is None or str(ttl).strip() == "":
        return None
    text = str(ttl).strip().lower()
    if text.isdigit():
        seconds = int(text)
    elif re.fullmatch(r"(\d+[dhms])+", text):
        seconds = sum(int(number) * _UNIT[unit] for number, unit in _DURATION.findall(text))
    else:
        raise PKIError(f"ttl {ttl!r} is neither seconds nor a duration such as 90m, 1h30m or 7d")
    if seconds < MIN_TTL:
        raise PKIError(f"ttl {ttl!r} ({seconds} s) is below the minimum of {MIN_TTL} s")
    return seconds


def wanted_sans(common_name: str, alt_names: list[str], ip_sans: list[str]) -> list[str]:
    """The normalized SANs the certificate must carry, sorted; validates every name on the way."""
    for ip in ip_sans:
        try:
            ipaddress.ip_address(str(ip).strip())
        except ValueError:
            raise PKIError(f"ip_sans: {ip!r} is not an IP address") from None
    for name in [common_name, *alt_names]:
        try:
            ipaddress.ip_address(str(name).strip())
        except ValueError:
            continue
        raise PKIError(f"{name!r} is an IP address: give it in ip_sans, not as common_name or in alt_names")
    parse_sans([common_name, *alt_names, *ip_sans])  # PKIError naming a malformed DNS name
    return sorted({normalize_san(name) for name in [common_name, *alt_names, *ip_sans]})


def check_csr(csr_pem: str, common_name: str, wanted: list[str]):
    """The parsed CSR, once it is sound and asks for exactly the wanted names."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
    except ValueError as exc:
        raise PKIError(f"csr is not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PKIError("the CSR's signature does not verify: it was altered after signing, or is corrupt")
    # Roles default to use_csr_common_name/use_csr_sans: OpenBao would then take the CSR's names and
    # ignore ours, so the CSR must ask for the same ones.
    cns = [attr.value for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns and normalize_san(cns[0]) != normalize_san(common_name):
        raise PKIError(
            f"the CSR's CN {cns[0]!r} differs from common_name {common_name!r}: create the CSR "
            f"with that CN or without one"
        )
    requested = set(sans_of(csr))
    # Even a CSR without SANs counts: with use_csr_sans OpenBao would drop alt_names and ip_sans.
    if requested | {normalize_san(common_name)} != set(wanted):
        detail = sans_difference(requested, set(wanted), implied={normalize_san(common_name)})
        raise PKIError(
            f"the CSR's SANs ({', '.join(sorted(requested)) or 'none'}) differ from common_name, alt_names and "
            f"ip_sans ({', '.join(wanted)}): {detail}; create the CSR for exactly these names"
        )
    return csr


# --- talking to OpenBao -----------------------------------------------------------------------


def _url(client) -> str:
    return client.url


def _sealed(client) -> PKIError:
    return PKIError(f"OpenBao at {_url(client)} is sealed: {SEALED_HINT}")


def _reason(exc: OpenBaoError) -> str:
    """The cause of a failed request without the client's own "cannot reach OpenBao at URL (...)"."""
    text = str(exc)
    return text.split("): ", 1)[1] if text.startswith("cannot reach OpenBao") and "): " in text else text


def _call(client, what: str, method: str, path: str, body: dict | None = None) -> dict:
    """One request; connection, seal and permission failures become PKIErrors naming OpenBao.
    Other refusals stay OpenBaoError with their status, for the caller to name."""
    try:
        return client.request(method, path, what=what, body=body)
    except OpenBaoError as exc:
        if exc.status is None:
            raise PKIError(f"cannot reach OpenBao at {_url(client)}: {_reason(exc)}") from None
        if exc.status == 503 and "sealed" in exc.errors.lower():
            raise _sealed(client) from None
        if exc.status in (401, 403):
            raise PKIError(
                f"OpenBao at {_url(client)} denied {what}: {exc.errors} (is the token valid, and does its "
                f"policy allow it?)"
            ) from None
        if exc.status >= 500 or exc.status == 429:
            raise PKIError(f"OpenBao at {_url(client)} is unavailable ({what}): {exc.errors}") from None
        raise


def make_client(
    url: str, token: str, *, ca_cert: str | None = None, validate_certs: bool = True, timeout: int = 10
) -> OpenBao:
    return OpenBao(url, ca_cert=ca_cert, token=token, timeout=timeout, validate_certs=validate_certs)


def check_health(client) -> None:
    """Raise a PKIError unless OpenBao answers, is initialized and is unsealed."""
    status = _call(client, "reading the seal status", "GET", "sys/seal-status")
    if not status.get("initialized", True):
        raise PKIError(
            f"OpenBao at {_url(client)} is not initialized: initialize and unseal it (see roles/openbao/README.md)"
        )
    if status.get("sealed"):
        raise _sealed(client)


def check_token(client) -> None:
    _call(client, "the token lookup (auth/token/lookup-self)", "GET", "auth/token/lookup-self")


def role_max_ttl(client, mount: str, role: str) -> int | None:
    """The role's max_ttl in seconds (0: the mount's), or None when the token may not read the role."""
    try:
        response = _call(client, f"reading {mount}/roles/{role}", "GET", f"{mount}/roles/{role}")
    except PKIError as exc:
        if "denied" in str(exc):
            return None  # a token allowed to sign but not to read roles: the check after signing still holds
        raise
    except OpenBaoError:
        raise PKIError(
            f"OpenBao at {_url(client)} has no role {role!r} at {mount}/roles/{role} (or no PKI secrets "
            f"engine at {mount})"
        ) from None
    return int((response.get("data") or {}).get("max_ttl") or 0)


def sign_csr(
    client,
    *,
    mount: str,
    role: str,
    csr: str,
    common_name: str,
    alt_names=(),
    ip_sans=(),
    ttl=None,
    check_mode: bool = False,
    now: datetime.datetime | None = None,
) -> dict:
    """Sign `csr` through `<mount>/sign/<role>` for exactly the given names, after every check."""
    seconds = parse_ttl(ttl)
    wanted = wanted_sans(common_name, list(alt_names), list(ip_sans))
    request = check_csr(csr, common_name, wanted)
    check_health(client)
    check_token(client)
    max_ttl = role_max_ttl(client, mount, role)
    if seconds is not None and max_ttl and seconds > max_ttl:
        raise PKIError(
            f"ttl {seconds} s is above the maximum of role {role} ({max_ttl} s, {mount}/roles/{role} "
            f"max_ttl): ask for less"
        )
    empty = {
        "changed": True,
        "certificate": "",
        "issuing_ca": "",
        "ca_chain": [],
        "chain": "",
        "serial_number": "",
        "info": {},
        "warnings": [],
    }
    if check_mode:
        return empty

    params = {"format": "pem", "csr": csr, "common_name": common_name}
    alt = sorted({normalize_san(name) for name in alt_names} - {normalize_san(common_name)})
    if alt:
        params["alt_names"] = ",".join(alt)
    if ip_sans:
        params["ip_sans"] = ",".join(sorted({normalize_san(ip) for ip in ip_sans}))
    if seconds is not None:
        params["ttl"] = f"{seconds}s"
    now = now or datetime.datetime.now(UTC)
    try:
        response = _call(client, f"signing with {mount}/sign/{role}", "POST", f"{mount}/sign/{role}", params)
    except OpenBaoError as exc:
        if exc.status == 404:
            raise PKIError(f"no PKI secrets engine mounted at {mount} in OpenBao at {_url(client)}") from None
        raise PKIError(f"OpenBao refused to sign with role {role} at {mount}: {exc.errors}") from None

    data = response["data"]
    serial = data.get("serial_number", "")
    issuing_ca = data.get("issuing_ca", "").strip()
    chain = data.get("ca_chain") or ([issuing_ca] if issuing_ca else [])
    # The checks every issuance passes (module_utils pki.check_issued); the host's tool runs them
    # again against its trust bundle before it installs the certificate.
    try:
        certificate, _ = check_issued(
            data["certificate"],
            public_key=request.public_key(),
            wanted_sans=wanted,
            chain_pem="\n".join(chain),
            ttl=seconds,
            asked_at=now,
        )
    except PKIError as exc:
        raise PKIError(
            f"OpenBao issued certificate {serial}, which is refused: {exc}; revoke it, and check role {role} at {mount}"
        ) from None
    certificate = certificate.decode()
    return {
        **empty,
        "certificate": certificate,
        "issuing_ca": issuing_ca + "\n" if issuing_ca else "",
        "ca_chain": [pem.strip() + "\n" for pem in chain],
        # The shape pki_builtin_ca returns too: the chain above the certificate as one PEM text.
        "chain": "".join(pem.strip() + "\n" for pem in chain),
        "serial_number": serial,
        "info": cert_info(certificate),
        "warnings": _relevant(response.get("warnings")),
    }


def _relevant(warnings) -> list[str]:
    # check_csr made the CSR's names ours, so "the role uses the CSR's names" says nothing new.
    return [text for text in warnings or [] if '"use_csr_common_name"' not in text and '"use_csr_sans"' not in text]
