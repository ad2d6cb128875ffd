"""Fail unless the host runs a release the running role declares in meta/main.yml.

Every role lists the Debian releases it supports in ``galaxy_info.platforms``
of its ``meta/main.yml`` (the standard Galaxy metadata).  Each role's
preflight calls this action first, so the list of supported releases is
written once per role and the refusal reads the same everywhere:

    - name: Assert the host runs a supported Debian release
      supported_release:

Outside a role (site.yml's preflight, before any role runs) ``meta_file``
names the role metadata to read.

The release comes from the gathered facts.  A host could lie about it, but
only to get the configuration of another supported release: it decides which
per-release variables a role loads on that host, never what the host is
trusted with.  Returns ``release`` (the codename) and ``version``.
"""

from __future__ import annotations

import os

import yaml
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
name: supported_release
short_description: Fail unless the host runs a Debian release the role's meta/main.yml lists
description:
  - Reads C(galaxy_info.platforms) of the running role's C(meta/main.yml) and compares the
    host's gathered C(distribution) and C(distribution_release) facts with it.
options:
  meta_file:
    description: The C(meta/main.yml) to read; the running role's when omitted.
    type: path
"""

# Debian's release numbers, for messages that name both.
DEBIAN_VERSIONS = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}


def supported(meta: dict) -> dict[str, list[str]]:
    """Platform name -> codenames from galaxy_info.platforms."""
    platforms = ((meta or {}).get("galaxy_info") or {}).get("platforms") or []
    return {p["name"]: [str(v) for v in p.get("versions") or []] for p in platforms}


def describe(codenames: list[str]) -> str:
    names = [f"{DEBIAN_VERSIONS[c]} ({c})" if c in DEBIAN_VERSIONS else c for c in codenames]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def check(facts: dict, platforms: dict[str, list[str]], role: str, host: str) -> str | None:
    """None when the host is supported, else the message that says what to do."""
    distribution = facts.get("distribution", "an unknown system")
    release = facts.get("distribution_release", "")
    if distribution in platforms and release in platforms[distribution]:
        return None
    wanted = "; ".join(f"{name} {describe(versions)}" for name, versions in platforms.items())
    version = facts.get("distribution_version") or DEBIAN_VERSIONS.get(release, "")
    return (
        f"{host} runs {distribution} {version} ({release or 'no release name'}); the {role} role "
        f"supports {wanted} only. Move the host to a supported release or out of the groups that "
        f"apply this role; the role stopped before changing anything."
    )


class ActionModule(ActionBase):
    _requires_connection = False
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        role = self._task._role
        meta_file = self._task.args.get("meta_file")
        if meta_file:
            role_name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(meta_file))))
        elif role is None:
            raise AnsibleActionFail("supported_release outside a role needs meta_file: the meta/main.yml to read")
        else:
            meta_file = os.path.join(role._role_path, "meta", "main.yml")
            role_name = role.get_name()
        with open(meta_file, encoding="utf-8") as handle:
            platforms = supported(yaml.safe_load(handle))
        if not platforms:
            raise AnsibleActionFail(f"{meta_file} lists no galaxy_info.platforms")
        facts = (task_vars or {}).get("ansible_facts") or {}
        if "distribution" not in facts:
            raise AnsibleActionFail(
                "the host's facts are missing: the play needs gather_facts "
                "(at least the distribution subset) before this role"
            )
        problem = check(facts, platforms, role_name, task_vars.get("inventory_hostname", "the host"))
        if problem:
            raise AnsibleActionFail(problem)
        result.update(
            changed=False,
            release=facts["distribution_release"],
            version=facts.get("distribution_version", ""),
            msg=f"{facts['distribution']} {facts['distribution_release']} is supported",
        )
        return result
