#!/usr/bin/python
"""Publish a .deb into a reprepro repository, idempotently and safely."""

from __future__ import annotations

DOCUMENTATION = r"""
module: reprepro_include
short_description: Publish a .deb in a reprepro repository, refusing to replace a published version
description:
  - Reads the package name, version and architecture from the .deb and looks the version up in the
    distribution.
  - The same file again changes nothing. A different file with a version that is already published
    (in the distribution or in the pool) is refused, because hosts that installed the first would
    never get the second and apt would report a hash mismatch; publish a new version instead.
  - Otherwise the file is included with C(reprepro includedeb), which signs the new index files.
options:
  basedir:
    description: The repository's base directory (holds conf/, db/, dists/, pool/).
    type: path
    required: true
  codename:
    description: Codename of the distribution in conf/distributions.
    type: str
    required: true
  component:
    description: Component to publish into.
    type: str
    default: main
  deb:
    description: Path of the .deb on the repository host.
    type: path
    required: true
  gnupghome:
    description: GnuPG home holding the signing key; GNUPGHOME for reprepro.
    type: path
author: sevenleague
"""

EXAMPLES = r"""
- name: Publish greeter
  reprepro_include:
    basedir: /srv/apt
    codename: sevenleague
    deb: /var/lib/apt-repo/incoming/greeter_1.0.0-1_all.deb
    gnupghome: /var/lib/apt-repo/gnupg
"""

RETURN = r"""
package:
  description: Package name from the .deb.
  returned: always
  type: str
  sample: greeter
version:
  description: Package version from the .deb.
  returned: always
  type: str
  sample: 1.0.0-1
architecture:
  description: Architecture from the .deb.
  returned: always
  type: str
  sample: all
sha256:
  description: SHA-256 of the .deb.
  returned: always
  type: str
action:
  description: C(included) or C(unchanged).
  returned: success
  type: str
"""

import hashlib
import os

from ansible.module_utils.basic import AnsibleModule


class PublishError(Exception):
    """A problem the operator must fix; the message says what."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deb_fields(run, deb: str) -> dict[str, str]:
    """Package, Version and Architecture of a .deb."""
    rc, out, err = run(["dpkg-deb", "--field", deb, "Package", "Version", "Architecture"])
    if rc != 0:
        raise PublishError(f"{deb} is not a readable .deb: {err.strip() or out.strip()}")
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    missing = {"Package", "Version", "Architecture"} - set(fields)
    if missing:
        raise PublishError(f"{deb} lacks the control fields {sorted(missing)}")
    return fields


def published_files(run, basedir: str, codename: str, package: str, version: str) -> set[str]:
    """Pool files of `package` at `version` in the distribution (relative to basedir)."""
    rc, out, err = run(["reprepro", "--basedir", basedir, "--list-format", "${Filename}\\n",
                        "listfilter", codename, f"Package (== {package}), Version (== {version})"])
    if rc != 0:
        raise PublishError(f"reprepro cannot list {codename} in {basedir}: {err.strip()}")
    return {line.strip() for line in out.splitlines() if line.strip()}


def pool_path(basedir: str, component: str, deb_name: str, package: str) -> str:
    """Where reprepro keeps this file: pool/<component>/<p or libp>/<source>/<file>."""
    prefix = package[:4] if package.startswith("lib") else package[0]
    return os.path.join(basedir, "pool", component, prefix, package, deb_name)


def decide(deb_sha: str, existing: dict[str, str]) -> str:
    """`include`, `unchanged`, or raise when another file holds this version."""
    if not existing:
        return "include"
    different = sorted(path for path, sha in existing.items() if sha != deb_sha)
    if different:
        raise PublishError(
            f"this version is already published from a different file ({', '.join(different)}); "
            f"a published version must never change: raise the version and build again")
    return "unchanged"


def publish(run, basedir: str, codename: str, component: str, deb: str, check_mode: bool = False) -> dict:
    fields = deb_fields(run, deb)
    package, version = fields["Package"], fields["Version"]
    deb_sha = sha256_file(deb)
    existing = {}
    for relative in published_files(run, basedir, codename, package, version):
        existing[relative] = sha256_file(os.path.join(basedir, relative))
    in_pool = pool_path(basedir, component, os.path.basename(deb), package)
    if os.path.exists(in_pool):
        existing[os.path.relpath(in_pool, basedir)] = sha256_file(in_pool)
    try:
        action = decide(deb_sha, existing)
    except PublishError as exc:
        raise PublishError(f"{package} {version}: {exc}") from None
    result = {"package": package, "version": version, "architecture": fields["Architecture"],
              "sha256": deb_sha, "action": "unchanged" if action == "unchanged" else "included",
              "changed": action == "include"}
    if action == "include" and not check_mode:
        rc, out, err = run(["reprepro", "--basedir", basedir, "--component", component,
                            "includedeb", codename, deb])
        if rc != 0:
            raise PublishError(f"reprepro refused {package} {version}: {(err or out).strip()}")
        # reprepro skips an older version than the one published, and still exits 0.
        if not published_files(run, basedir, codename, package, version):
            current = published_versions(run, basedir, codename, package)
            raise PublishError(
                f"reprepro did not publish {package} {version}: {codename} has {', '.join(current) or 'another'}"
                f" and keeps one version of a package; publish a version above it. {(err or out).strip()}")
    return result


def published_versions(run, basedir: str, codename: str, package: str) -> list[str]:
    rc, out, _ = run(["reprepro", "--basedir", basedir, "--list-format", "${version}\\n",
                      "listfilter", codename, f"Package (== {package})"])
    return sorted({line.strip() for line in out.splitlines() if line.strip()}) if rc == 0 else []


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "basedir": {"type": "path", "required": True},
            "codename": {"type": "str", "required": True},
            "component": {"type": "str", "default": "main"},
            "deb": {"type": "path", "required": True},
            "gnupghome": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    environ = {"GNUPGHOME": params["gnupghome"]} if params["gnupghome"] else {}

    def run(args):
        return module.run_command(args, environ_update=environ)

    if not os.path.isfile(params["deb"]):
        module.fail_json(msg=f"{params['deb']} does not exist on the repository host")
    try:
        result = publish(run, params["basedir"], params["codename"], params["component"], params["deb"],
                         module.check_mode)
    except PublishError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
