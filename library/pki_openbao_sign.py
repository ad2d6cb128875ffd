#!/usr/bin/python
"""The OpenBao backend: a PKI role signs a host's CSR through pki/sign/<role>; the key stays on the host."""

from __future__ import annotations

from ansible_collections.sevenleague.platform.plugins.module_utils.openbao_sign import make_client, sign_csr

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
chain:
  description:
    - The issuer's chain as one PEM text (RV(ca_chain) joined), as M(pki_builtin_ca) returns it with
      O(state=signed), so a caller handles both backends' answers alike; empty in check mode.
  returned: always
  type: str
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


from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    HAS_CRYPTOGRAPHY,
)
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_module import run_ansible_module

if HAS_CRYPTOGRAPHY:
    pass


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
