#!/usr/bin/python
"""The OpenBao backend: a PKI role signs a host's CSR through pki/sign/<role>; the key stays on the host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_openbao_sign
short_description: Have an OpenBao PKI role sign a host's CSR, so the private key never leaves the host
description:
  - "The OpenBao backend of sevenleague's PKI. Sends O(csr) to C(<mount>/sign/<role>) and returns the
    certificate. community.hashi_vault only offers C(issue), which generates the key on the server;
    here hosts generate their own keys and only their CSRs travel."
  - "The certificate is for exactly O(common_name), O(alt_names) and O(ip_sans). The CSR must ask for
    these names and no others (its CN empty or O(common_name); its SANs exactly O(alt_names) and
    O(ip_sans), with or without O(common_name)): OpenBao roles default to C(use_csr_common_name) and C(use_csr_sans), which
    silently take the names from the CSR instead of the request. The issued certificate is checked
    again: its key must be the CSR's and its SANs the requested ones."
  - "OpenBao never refuses a O(ttl) above the role's C(max_ttl): it shortens the certificate and
    only warns. This module refuses instead. Before signing it reads C(<mount>/roles/<role>) and fails
    when O(ttl) exceeds the role's C(max_ttl) (skipped when the token may not read the role). After
    signing it fails when the certificate ends more than a minute before O(ttl) asks (an issuer with C(leaf_not_after_behavior=truncate)
    shortens to its own expiry, and a token that may not read the role skips the pre-check); that
    certificate was issued in OpenBao, and the message names its serial."
  - "Errors name the cause: OpenBao unreachable, sealed or uninitialized, a token without permission,
    a missing mount or role, a SAN the role refuses, a TTL above the maximum, a malformed CSR."
  - Every call issues a new certificate; decide first whether one is needed (the renewal policy is
    the host's C(sevenleague-pki status), with the collection's C(pki) module_utils).
requirements:
  - "OpenBao's API through the collection's C(openbao) module_utils, the client the hosts' tool uses too (no hvac)"
  - cryptography >= 38
options:
  url:
    description:
      - Address of OpenBao, e.g. C(https://bao.sevenleague.test:8200).
    type: str
    required: true
  token:
    description:
      - OpenBao token whose policy allows C(update) on C(<mount>/sign/<role>) (and, for the TTL
        pre-check, C(read) on C(<mount>/roles/<role>)).
    type: str
    required: true
  ca_cert:
    description:
      - CA bundle (PEM file) that verifies OpenBao's TLS certificate. Without it the system's trust store is used.
    type: path
  validate_certs:
    description:
      - Whether to verify OpenBao's TLS certificate. Turn off only in a throwaway lab.
    type: bool
    default: true
  mount:
    description:
      - Mount point of the PKI secrets engine that holds O(role).
    type: str
    default: pki_int
  role:
    description:
      - The PKI role that signs; it decides the allowed names, the key types and the maximum TTL.
    type: str
    required: true
  csr:
    description:
      - The host's certificate signing request, PEM.
    type: str
    required: true
  common_name:
    description:
      - The certificate's CN; OpenBao also adds it to the DNS SANs.
    type: str
    required: true
  alt_names:
    description:
      - Further DNS SANs.
    type: list
    elements: str
    default: []
  ip_sans:
    description:
      - IP SANs (the role needs C(allow_ip_sans)).
    type: list
    elements: str
    default: []
  ttl:
    description:
      - Lifetime of the certificate, as seconds (C(3600)) or a duration (C(90m), C(1h30m), C(7d)).
        Without it the role's C(ttl) applies (else the mount's default, capped at C(max_ttl)).
    type: str
  timeout:
    description:
      - Seconds to wait for OpenBao per request.
    type: int
    default: 10
notes:
  - Supports check mode. It validates the inputs and the CSR, checks that OpenBao is reachable and
    unsealed, that the token is valid and, when the token may read it, that the role exists and
    allows O(ttl); it signs nothing, and RV(certificate) is empty.
  - "Token authentication: this is the controller's path (first issue, rotate-certs.yml). Hosts renew
    on their own with a login by their current certificate (C(auth/cert/login)), which the pki role's
    timer C(sevenleague-pki renew) does without Ansible."
  - The TTL check after signing compares with the controller's clock; keep OpenBao's clock in sync (NTP).
author: sevenleague
"""

EXAMPLES = r"""
- name: Have OpenBao sign the host's CSR
  pki_openbao_sign:
    url: https://bao.sevenleague.test:8200
    token: "{{ vault_pki_openbao_token }}"
    ca_cert: "{{ playbook_dir }}/files/openbao-ca.pem"
    role: host
    csr: "{{ __pki_csr.csr }}"
    common_name: "{{ inventory_hostname }}"
    alt_names: "{{ pki_sans | reject('ansible.utils.ipaddr') | list }}"
    ip_sans: "{{ pki_sans | select('ansible.utils.ipaddr') | list }}"
    ttl: 1h
  delegate_to: localhost
  when: __pki_check.renew
  register: __pki_signed
"""

RETURN = r"""
certificate:
  description: The new certificate, PEM; empty in check mode.
  returned: always
  type: str
issuing_ca:
  description: The certificate of the issuer that signed it, PEM; empty in check mode.
  returned: always
  type: str
ca_chain:
  description: The issuer's chain as OpenBao returns it (issuer first), PEM certificates; empty in check mode.
  returned: always
  type: list
  elements: str
serial_number:
  description: The serial as OpenBao writes it (colon-separated hex), for C(pki/revoke); empty in check mode.
  returned: always
  type: str
  sample: "42:a3:89:94:19:e7:bc:78:5e:44:22:01:6a:e8:a9:e3:22:dd:19:49"
info:
  description:
    - Facts about the new certificate, as C(pki_builtin_ca)'s RV(info) gives them (C(serial), C(not_before),
      C(not_after), C(sans), C(issuer), C(subject), C(fingerprint_sha256)); empty in check mode.
  returned: always
  type: dict
"""

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
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_module import run_ansible_module

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
        extra, missing = sorted(requested - set(wanted)), sorted(set(wanted) - requested - {normalize_san(common_name)})
        detail = "; ".join(
            part
            for part in (extra and "it asks also for " + ", ".join(extra), missing and "it lacks " + ", ".join(missing))
            if part
        )
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
        "serial_number": serial,
        "info": cert_info(certificate),
        "warnings": _relevant(response.get("warnings")),
    }


def _relevant(warnings) -> list[str]:
    # check_csr made the CSR's names ours, so "the role uses the CSR's names" says nothing new.
    return [text for text in warnings or [] if '"use_csr_common_name"' not in text and '"use_csr_sans"' not in text]


# --- the module -------------------------------------------------------------------------------

ARGUMENT_SPEC = {
    "url": {"type": "str", "required": True},
    "token": {"type": "str", "required": True, "no_log": True},
    "ca_cert": {"type": "path"},
    "validate_certs": {"type": "bool", "default": True},
    "mount": {"type": "str", "default": "pki_int"},
    "role": {"type": "str", "required": True},
    "csr": {"type": "str", "required": True},
    "common_name": {"type": "str", "required": True},
    "alt_names": {"type": "list", "elements": "str", "default": []},
    "ip_sans": {"type": "list", "elements": "str", "default": []},
    "ttl": {"type": "str"},
    "timeout": {"type": "int", "default": 10},
}


def run(params: dict, check_mode: bool) -> dict:
    client = make_client(
        params["url"],
        params["token"],
        ca_cert=params["ca_cert"],
        validate_certs=params["validate_certs"],
        timeout=params["timeout"],
    )
    return sign_csr(
        client,
        mount=params["mount"].strip("/"),
        role=params["role"],
        csr=params["csr"],
        common_name=params["common_name"],
        alt_names=params["alt_names"],
        ip_sans=params["ip_sans"],
        ttl=params["ttl"],
        check_mode=check_mode,
    )


def main() -> None:
    run_ansible_module(ARGUMENT_SPEC, run, warning_prefix="OpenBao: ")


if __name__ == "__main__":
    main()
