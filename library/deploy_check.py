#!/usr/bin/python
"""Whether a host can take a release: the repository it uses has the version, and one is installed to go back to."""

from __future__ import annotations

DOCUMENTATION = r"""
module: deploy_check
short_description: Check that a host can take a package version and has one to go back to
description:
  - "Before a rolling deploy (C(playbooks/deploy.yml)) changes any host: the repository this host
    uses must offer O(version) of O(package) (C(apt-cache madison), so refresh the package lists
    first), and the package must be installed, so that a failed health check has a version to go
    back to. Either refusal says what to do; RV(installed) is the version to go back to."
  - Reads only; changes nothing.
options:
  package:
    description: The Debian package of the service.
    type: str
    required: true
  version:
    description: The full Debian version to deploy (upstream-revision, e.g. C(1.2.0-1)).
    type: str
    required: true
notes:
  - Supports check mode; it reads the same in both.
author: sevenleague
"""

EXAMPLES = r"""
- name: Check the repository has the version and note the installed one
  deploy_check:
    package: greeter
    version: 1.2.0-1
  register: __deploy_check
"""

RETURN = r"""
installed:
  description: The installed version of O(package).
  returned: success
  type: str
available:
  description: The versions the repository offers, as C(apt-cache madison) lists them.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def madison_versions(output: str) -> list[str]:
    """The versions of `apt-cache madison` output: lines of `package | version | source`."""
    versions = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) >= 3 and fields[1] and fields[1] not in versions:
            versions.append(fields[1])
    return versions


def problem(package: str, version: str, available: list[str], installed: str) -> str | None:
    """What stops this host from taking `version`, in the order to fix it; None when nothing does."""
    if version not in available:
        return (
            f"{package} {version} is not in the repository this host uses: `apt-cache madison {package}` there "
            "lists the published versions; publish it first (playbooks/publish.yml)."
        )
    if not installed:
        return (
            f"{package} is not installed on this host: converge it with site.yml (which installs the pinned "
            "version) before rolling it out."
        )
    return None


ARGUMENT_SPEC = {
    "package": {"type": "str", "required": True},
    "version": {"type": "str", "required": True},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    package, version = module.params["package"], module.params["version"]
    rc, out, err = module.run_command(["apt-cache", "madison", package], expand_user_and_vars=False)
    if rc != 0:
        module.fail_json(msg=f"apt-cache madison {package} failed: {err.strip() or out.strip()}")
    available = madison_versions(out)
    # Not installed (or never known to dpkg): an empty version, which the check below names.
    _, installed, _ = module.run_command(
        ["dpkg-query", "--showformat", "${Version}", "--show", package], expand_user_and_vars=False
    )
    installed = installed.strip()
    why = problem(package, version, available, installed)
    if why:
        module.fail_json(msg=why, available=available, installed=installed)
    module.exit_json(changed=False, available=available, installed=installed)


if __name__ == "__main__":
    main()
