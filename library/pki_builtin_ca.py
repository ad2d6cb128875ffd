#!/usr/bin/python
"""The built-in CA: a root and an intermediate kept on the controller, signing hosts' CSRs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_builtin_ca
short_description: Keep a two-level internal CA on the controller and sign hosts' CSRs with it
description:
  - "The built-in CA backend of sevenleague's PKI. Runs on the controller (C(delegate_to: localhost));
    hosts generate their own keys and only their CSRs travel here."
  - C(state=ca) makes sure a root CA (ECDSA P-384) and an intermediate CA (ECDSA P-256) exist in
    O(ca_dir). An existing, consistent CA is never replaced; nothing is regenerated automatically
    (rollover is a playbook of its own), but RV(intermediate_renew_needed) says when the intermediate
    has less than a third of its lifetime left. Only the derived C(chain.pem), the file modes and the
    keys' encryption (see below) are repaired.
  - "Both keys are encrypted at rest: PKCS#8 PEM (C(ENCRYPTED PRIVATE KEY)) with PBES2,
    PBKDF2-HMAC-SHA256 at 600000 iterations (OWASP 2023) and AES-256-CBC, which
    C(openssl pkey -in root.key) also reads. With O(state=ca), a key that is unencrypted or encrypted
    with a weaker KDF (the 2048 iterations of earlier versions) is re-encrypted in place with the
    given passphrase: the new file replaces the old only after it decrypted to the same key. The
    certificates stay as they are; RV(rekeyed) names the keys."
  - C(state=signed) signs O(csr) with the intermediate for exactly O(sans), for O(ttl) seconds.
    It refuses a CSR whose signature does not verify, a CSR that asks for other SANs than O(sans),
    a SAN outside O(allowed_domains)/O(allowed_networks), a O(ttl) above O(max_ttl), and a key
    weaker than ECDSA P-256 or RSA-2048. The CSR's subject and extensions are ignored; the CA sets
    them. Every call issues a new certificate; the host's C(sevenleague-pki status) decides first.
  - C(state=signed) keeps every certificate it issues under C(issued/<serial>.pem) until it expires,
    so a host's certificates can be listed and revoked.
  - C(state=crl) revokes the serials of O(revoke) and every still valid certificate issued to a CN of
    O(revoke_names), and keeps C(crl.pem), the intermediate's CRL, current (made again when something
    was revoked or less than half of O(crl_lifetime) is left). The same for each CA of O(other_ca_dirs)
    (a CA rollover's other CA). RV(crl) holds every CRL, PEM. The root signs no CRL.
  - "Files in O(ca_dir) (mode 0700): C(root.crt), C(root.key), C(intermediate.crt),
    C(intermediate.key) (keys 0600), C(chain.pem) (intermediate, then root). All are written
    atomically, under a lock (C(.lock)), so parallel runs cannot mix two CAs."
requirements:
  - cryptography >= 38 on the controller
options:
  state:
    description:
      - C(ca) ensures the CA exists, C(signed) issues a certificate, C(crl) revokes and keeps the CRL current.
    type: str
    required: true
    choices: [ca, signed, crl]
  ca_dir:
    description:
      - Directory of the CA on the controller. Keep it out of version control.
    type: path
    required: true
  ca_name:
    description:
      - Organization of the CA certificates; the CNs are "NAME Root CA" and "NAME Intermediate CA".
      - Used only when the CA is created.
    type: str
    default: sevenleague
  root_passphrase:
    description:
      - Passphrase that encrypts the root CA key at rest. Required with O(state=ca).
    type: str
  intermediate_passphrase:
    description:
      - Passphrase that encrypts the intermediate CA key at rest. Required with O(state=ca), and with
        O(state=signed) to decrypt the key. May differ from O(root_passphrase), so that signing needs no
        root secret.
    type: str
  root_lifetime_days:
    description:
      - Lifetime of a new root CA, in days. Used only when the CA is created.
    type: int
    default: 3650
  intermediate_lifetime_days:
    description:
      - Lifetime of a new intermediate CA, in days (never beyond the root's). Used only when the CA is created.
    type: int
    default: 365
  allowed_domains:
    description:
      - DNS domains the CA issues for; a SAN must equal one or lie below it.
      - With O(state=ca) they become the permitted DNS subtrees of the CA's name constraints, so even a
        stolen intermediate key cannot make certificates that clients accept for other names.
    type: list
    elements: str
    default: []
  allowed_networks:
    description:
      - IP networks (CIDR) the CA issues IP SANs for. Empty means no IP SANs.
      - With O(state=ca) they become the permitted IP subtrees of the name constraints.
    type: list
    elements: str
    default: []
  allow_wildcard:
    description:
      - Whether a SAN may be a wildcard (C(*.example.test)).
    type: bool
    default: false
  csr:
    description:
      - The host's certificate signing request, PEM. Required with O(state=signed).
    type: str
  sans:
    description:
      - The names the certificate is for (DNS names or IP addresses); the first is also the CN.
        Required with O(state=signed).
    type: list
    elements: str
  ttl:
    description:
      - Lifetime of the certificate in seconds (at least 60). Clipped to the intermediate's expiry.
    type: int
    default: 86400
  max_ttl:
    description:
      - The longest O(ttl) this CA grants; a longer request fails.
    type: int
    default: 604800
  revoke:
    description:
      - With O(state=crl), serial numbers (hex) of certificates to revoke.
    type: list
    elements: str
    default: []
  revoke_names:
    description:
      - With O(state=crl), revoke every still valid certificate issued for one of these CNs (a host's name).
    type: list
    elements: str
    default: []
  crl_lifetime:
    description:
      - With O(state=crl), seconds from a new CRL's thisUpdate to its nextUpdate. A host that holds an
        expired CRL refuses every peer, so keep it far above the time between converges.
    type: int
    default: 604800
  other_ca_dirs:
    description:
      - With O(state=crl), further CA folders whose intermediate also signs a CRL (same passphrase); folders
        without an intermediate key are skipped.
    type: list
    elements: path
    default: []
notes:
  - Supports check mode. With O(state=ca) nothing is written; with O(state=signed) every check runs
    but nothing is signed, and RV(certificate) is empty.
author: sevenleague
"""

EXAMPLES = r"""
- name: Ensure the built-in CA exists
  pki_builtin_ca:
    state: ca
    ca_dir: "{{ pki_builtin_ca_dir }}"
    root_passphrase: "{{ vault_pki_root_passphrase }}"
    intermediate_passphrase: "{{ vault_pki_intermediate_passphrase }}"
    allowed_domains: [sevenleague.test]
    allowed_networks: [10.213.7.0/24]
  delegate_to: localhost
  run_once: true

- name: Sign the host's CSR
  pki_builtin_ca:
    state: signed
    ca_dir: "{{ pki_builtin_ca_dir }}"
    intermediate_passphrase: "{{ vault_pki_intermediate_passphrase }}"
    csr: "{{ __pki_csr.csr }}"
    sans: "{{ pki_sans }}"
    ttl: 86400
    allowed_domains: [sevenleague.test]
    allowed_networks: [10.213.7.0/24]
  delegate_to: localhost
  register: __pki_signed
"""

RETURN = r"""
created:
  description: Whether the CA was created by this run (O(state=ca)).
  returned: state is ca
  type: bool
root_certificate:
  description: The root CA certificate, PEM (the trust anchor to distribute).
  returned: state is ca and the CA exists
  type: str
root:
  description: Facts about the root CA certificate (as RV(info)).
  returned: state is ca and the CA exists
  type: dict
intermediate:
  description: Facts about the intermediate CA certificate (as RV(info)).
  returned: state is ca and the CA exists
  type: dict
rekeyed:
  description:
    - The key files re-encrypted with today's KDF by this run (in check mode, those that would be).
  returned: state is ca
  type: list
  elements: str
  sample: [root.key, intermediate.key]
intermediate_renew_needed:
  description: Whether the intermediate has less than a third of its lifetime left (or expired).
  returned: state is ca
  type: bool
intermediate_renew_reason:
  description: Why, or until when the intermediate is fine.
  returned: state is ca
  type: str
  sample: "valid: renews after 2026-09-01T10:00:00Z"
certificate:
  description: The new certificate, PEM; empty in check mode.
  returned: state is signed
  type: str
chain:
  description: The intermediate CA certificate, PEM; with O(state=ca), intermediate then root.
  returned: state is signed, or state is ca and the CA exists
  type: str
ca:
  description: The root CA certificate, PEM.
  returned: state is signed
  type: str
crl:
  description: The CRL of O(ca_dir)'s intermediate, then those of O(other_ca_dirs), PEM.
  returned: state is crl
  type: str
revoked:
  description: Serials revoked by this run (in check mode, that would be).
  returned: state is crl
  type: list
  elements: str
known_names:
  description: CNs of the certificates O(ca_dir) issued that have not expired (the hosts it knows).
  returned: state is crl
  type: list
  elements: str
ttl_clipped:
  description: Whether the certificate ends earlier than asked because the intermediate expires first.
  returned: state is signed
  type: bool
info:
  description: Facts about the new certificate; empty in check mode.
  returned: state is signed
  type: dict
  contains:
    serial:
      description: Serial number, lowercase hex.
      type: str
    not_before:
      description: Start of validity, ISO 8601 UTC.
      type: str
      sample: "2026-01-01T00:00:00Z"
    not_after:
      description: End of validity, ISO 8601 UTC.
      type: str
    sans:
      description: SANs, sorted.
      type: list
      elements: str
    issuer:
      description: Issuer DN (RFC 4514).
      type: str
    subject:
      description: Subject DN (RFC 4514).
      type: str
    fingerprint_sha256:
      description: SHA-256 of the DER certificate, lowercase hex.
      type: str
"""


import os

from ansible_collections.sevenleague.platform.plugins.module_utils.ca_crl import ensure_crl, issued_names, record_issued
from ansible_collections.sevenleague.platform.plugins.module_utils.ca_sign import sign_csr
from ansible_collections.sevenleague.platform.plugins.module_utils.ca_store import ensure_ca, load_ca
from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    HAS_CRYPTOGRAPHY,
    PKIError,
)
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_module import run_ansible_module

if HAS_CRYPTOGRAPHY:
    pass


ARGUMENT_SPEC = {
    "state": {"type": "str", "required": True, "choices": ["ca", "signed", "crl"]},
    "ca_dir": {"type": "path", "required": True},
    "ca_name": {"type": "str", "default": "sevenleague"},
    "root_passphrase": {"type": "str", "no_log": True},
    "intermediate_passphrase": {"type": "str", "no_log": True},
    "root_lifetime_days": {"type": "int", "default": 3650},
    "intermediate_lifetime_days": {"type": "int", "default": 365},
    "allowed_domains": {"type": "list", "elements": "str", "default": []},
    "allowed_networks": {"type": "list", "elements": "str", "default": []},
    "allow_wildcard": {"type": "bool", "default": False},
    "csr": {"type": "str"},
    "sans": {"type": "list", "elements": "str"},
    "ttl": {"type": "int", "default": 86400},
    "max_ttl": {"type": "int", "default": 604800},
    "revoke": {"type": "list", "elements": "str", "default": []},
    "revoke_names": {"type": "list", "elements": "str", "default": []},
    "crl_lifetime": {"type": "int", "default": 604800},
    "other_ca_dirs": {"type": "list", "elements": "path", "default": []},
}
REQUIRED_IF = [
    ("state", "ca", ["root_passphrase", "intermediate_passphrase"]),
    ("state", "signed", ["csr", "sans"]),
    ("state", "crl", ["intermediate_passphrase"]),
]


def crls(params: dict, check_mode: bool) -> dict:
    """Revoke in, and keep the CRL of, the active CA and each other CA folder that can sign."""
    if params["crl_lifetime"] < 3600:
        raise PKIError(f"crl_lifetime {params['crl_lifetime']} s is below an hour: hosts would refuse every peer")
    results = []
    for ca_dir in [params["ca_dir"]] + [d for d in params["other_ca_dirs"] if d != params["ca_dir"]]:
        if ca_dir != params["ca_dir"] and not os.path.exists(os.path.join(ca_dir, "intermediate.key")):
            continue
        ca = load_ca(ca_dir, params["intermediate_passphrase"])
        results.append(
            ensure_crl(
                ca_dir,
                ca,
                revoke=params["revoke"] if ca_dir == params["ca_dir"] else [],
                revoke_names=params["revoke_names"],
                lifetime=params["crl_lifetime"],
                check_mode=check_mode,
            )
        )
    return {
        "changed": any(r["changed"] for r in results),
        "crl": "".join(r["crl"] for r in results),
        "revoked": [s for r in results for s in r["revoked"]],
        "known_names": issued_names(params["ca_dir"]),
    }


def run(params: dict, check_mode: bool) -> dict:
    """Dispatch on state; PKIError carries every message meant for the operator."""
    state = params["state"]
    if state == "ca":
        return ensure_ca(
            params["ca_dir"],
            root_passphrase=params["root_passphrase"],
            intermediate_passphrase=params["intermediate_passphrase"],
            name=params["ca_name"],
            allowed_domains=params["allowed_domains"],
            allowed_networks=params["allowed_networks"],
            root_days=params["root_lifetime_days"],
            intermediate_days=params["intermediate_lifetime_days"],
            check_mode=check_mode,
        )
    if state == "crl":
        return crls(params, check_mode)
    ca = load_ca(params["ca_dir"], params["intermediate_passphrase"])
    result = sign_csr(
        ca,
        params["csr"],
        params["sans"],
        params["ttl"],
        max_ttl=params["max_ttl"],
        allowed_domains=params["allowed_domains"],
        allowed_networks=params["allowed_networks"],
        allow_wildcard=params["allow_wildcard"],
        check_mode=check_mode,
    )
    if result["certificate"]:
        record_issued(params["ca_dir"], result["certificate"])
    return result


def main() -> None:
    run_ansible_module(ARGUMENT_SPEC, run, required_if=REQUIRED_IF)


if __name__ == "__main__":
    main()
