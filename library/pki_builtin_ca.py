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
  - "Files in O(ca_dir) (mode 0700): C(root.crt), C(root.key), C(intermediate.crt),
    C(intermediate.key) (keys 0600), C(chain.pem) (intermediate, then root). All are written
    atomically, under a lock (C(.lock)), so parallel runs cannot mix two CAs."
requirements:
  - cryptography >= 38 on the controller
options:
  state:
    description:
      - C(ca) ensures the CA exists, C(signed) issues a certificate.
    type: str
    required: true
    choices: [ca, signed]
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


from ansible_collections.sevenleague.platform.plugins.module_utils.ca_sign import sign_csr
from ansible_collections.sevenleague.platform.plugins.module_utils.ca_store import ensure_ca, load_ca
from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    HAS_CRYPTOGRAPHY,
)
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_module import run_ansible_module

if HAS_CRYPTOGRAPHY:
    pass


ARGUMENT_SPEC = {
    "state": {"type": "str", "required": True, "choices": ["ca", "signed"]},
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
}
REQUIRED_IF = [("state", "ca", ["root_passphrase", "intermediate_passphrase"]), ("state", "signed", ["csr", "sans"])]


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
    ca = load_ca(params["ca_dir"], params["intermediate_passphrase"])
    return sign_csr(
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


def main() -> None:
    run_ansible_module(ARGUMENT_SPEC, run, required_if=REQUIRED_IF)


if __name__ == "__main__":
    main()
