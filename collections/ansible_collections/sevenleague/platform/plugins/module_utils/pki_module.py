"""main() of the PKI modules (pki_builtin_ca, pki_openbao_sign): one way to check inputs and report.

Controller-side only: the hosts' tool never imports it.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    PKIError,
)


def run_ansible_module(argument_spec: dict, run, *, required_if=None, warning_prefix: str = "") -> None:
    """main() of the PKI modules: check the inputs, run(params, check_mode), report. A PKIError
    becomes a failure with its message; run()'s `warnings` become Ansible warnings."""
    module = AnsibleModule(argument_spec=argument_spec, required_if=required_if or [], supports_check_mode=True)
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=str(CRYPTOGRAPHY_IMPORT_ERROR))
    try:
        result = run(module.params, module.check_mode)
    except PKIError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings", []):
        module.warn(f"{warning_prefix}{warning}")
    module.exit_json(**result)
