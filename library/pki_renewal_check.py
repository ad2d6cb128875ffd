#!/usr/bin/python
"""The renewal policy of every CA backend, for a certificate and the issuer that signs today."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_renewal_check
short_description: Decide whether a host's certificate needs renewing, whichever CA signs it
description:
  - "Applies the renewal policy shared by every backend (C(module_utils/sevenleague_pki.py)) and
    changes nothing: renew when there is no certificate, it expired, less than O(renew_fraction) of
    its lifetime remains, its SANs differ from O(sans), or O(issuer_certificate) (the CA that signs
    today) did not issue it."
  - The built-in backend uses C(pki_builtin_ca state=check), which reads the issuer from its CA
    directory; this module takes the issuer as PEM, e.g. as OpenBao serves it at C(<mount>/cert/ca).
requirements:
  - cryptography >= 38
options:
  current_certificate:
    description: The host's current certificate, PEM; empty when it has none.
    type: str
    default: ""
  issuer_certificate:
    description: The issuing CA's certificate, PEM; empty skips the issuer check.
    type: str
    default: ""
  sans:
    description: The names the certificate must carry, exactly.
    type: list
    elements: str
    required: true
  renew_fraction:
    description: Renew when less than this fraction of the lifetime remains.
    type: float
    default: 0.3333
  name:
    description: The certificate's name in RV(metrics) (the C(name) label).
    type: str
    default: host
author: sevenleague
"""

EXAMPLES = r"""
- name: Decide whether this host needs a new certificate
  pki_renewal_check:
    current_certificate: "{{ __current.content | b64decode }}"
    issuer_certificate: "{{ __issuer.json.data.certificate }}"
    sans: [app1.example.internal, 10.0.0.21]
  delegate_to: localhost
  register: __check
"""

RETURN = r"""
renew:
  description: Whether a new certificate is needed.
  returned: always
  type: bool
reason:
  description: Why, or until when the current one is fine.
  returned: always
  type: str
info:
  description: Facts about the current certificate (serial, not_before, not_after, sans, issuer, subject, fingerprint_sha256); empty when there is none.
  returned: always
  type: dict
metrics:
  description: node_exporter textfile lines for the current certificate; empty when there is none.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible.module_utils.sevenleague_pki import (
        CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY, PKIError, check_certificate)
except ImportError:  # pytest imports this file directly, where Ansible's module_utils namespace is absent
    from sevenleague_pki import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY, PKIError, check_certificate

ARGUMENT_SPEC = {
    "current_certificate": {"type": "str", "default": ""},
    "issuer_certificate": {"type": "str", "default": ""},
    "sans": {"type": "list", "elements": "str", "required": True},
    "renew_fraction": {"type": "float", "default": 0.3333},
    "name": {"type": "str", "default": "host"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=str(CRYPTOGRAPHY_IMPORT_ERROR))
    params = module.params
    try:
        result = check_certificate(params["current_certificate"], params["sans"],
                                   params["issuer_certificate"] or None,
                                   renew_fraction=params["renew_fraction"], name=params["name"])
    except PKIError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
