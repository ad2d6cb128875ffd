#!/usr/bin/python
"""Publish .deb files in an aptly repository that keeps every version."""

from __future__ import annotations

DOCUMENTATION = r"""
module: aptly_publish
short_description: Publish .deb files with aptly, keeping every version and refusing to change a published one
description:
  - Keeps one aptly local repository that holds every version ever published, and one signed
    publication of it. Each publish is a snapshot of the repository, so the publication can be
    switched back to an earlier state and the snapshot list is the history of what was published.
  - Reads each .deb's package name, version and architecture. The same file again changes nothing.
    A different file under a name, version and architecture aptly already holds is refused, because
    hosts that installed the first would never get the second and apt would report a hash mismatch;
    publish a new version instead. The whole batch is checked before anything is added.
  - New files are added to the repository, a snapshot named C(<repo>-<UTC time>) is taken, and the
    publication is switched to it (the first run publishes it), which signs the new indexes with
    I(gpg_key), or leaves them unsigned without it (the apt_repo role signs them on the controller).
  - With no files it makes sure the repository and its publication exist, so clients can
    C(apt update) before the first package. A publication that lags behind the repository (a run
    interrupted between adding and switching) is brought up to date.
options:
  config:
    description: aptly's configuration file (its rootDir holds the database, the pool and public/).
    type: path
    default: /etc/aptly.conf
  repo:
    description: Name of the local repository.
    type: str
    required: true
  distribution:
    description: Distribution (codename) of the publication.
    type: str
    required: true
  component:
    description: Component of the publication.
    type: str
    default: main
  origin:
    description: C(Origin) of the publication's Release file, set when it is first published; a
      publication with another one is reported, not changed.
    type: str
  label:
    description: C(Label) of the publication's Release file, like I(origin).
    type: str
  gpg_key:
    description: Fingerprint of the signing key; without it aptly signs nothing (C(-skip-signing)).
    type: str
  gnupghome:
    description: GnuPG home holding the signing key; GNUPGHOME for aptly.
    type: path
  debs:
    description: Paths of the .deb files on the repository host.
    type: list
    elements: path
    default: []
author: sevenleague
"""

EXAMPLES = r"""
- name: Publish greeter
  aptly_publish:
    repo: sevenleague
    distribution: sevenleague
    debs: [/var/lib/apt-repo/incoming/greeter_1.1.0-1_all.deb]
"""

RETURN = r"""
packages:
  description: One entry per file, with C(package), C(version), C(architecture), C(sha256) and
    C(action) (C(added) or C(unchanged)).
  returned: always
  type: list
  elements: dict
snapshot:
  description: The snapshot the publication serves after this run.
  returned: always
  type: str
  sample: sevenleague-20261202T104425Z
previous_snapshot:
  description: The snapshot the publication served before this run (empty when it was not published).
  returned: always
  type: str
"""

import datetime
import hashlib
import json
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


class Aptly:
    def __init__(self, run, config: str):
        self._run = run
        self.config = config

    def __call__(self, *args: str) -> str:
        rc, out, err = self._run(["aptly", f"-config={self.config}", *args])
        if rc != 0:
            raise PublishError(f"`aptly {' '.join(args)}` failed: {(err or out).strip()}")
        return out

    def json(self, *args: str):
        return json.loads(self(*args) or "null")

    def repos(self) -> set[str]:
        return set(self("repo", "list", "-raw").split())

    def repo_packages(self, repo: str) -> set[str]:
        return set(self.json("repo", "show", "-json", "-with-packages", repo).get("Packages") or [])

    def snapshot_packages(self, snapshot: str) -> set[str]:
        return set(self.json("snapshot", "show", "-json", "-with-packages", snapshot).get("Packages") or [])

    def snapshots(self) -> set[str]:
        return set(self("snapshot", "list", "-raw").split())

    def publication(self, distribution: str) -> dict | None:
        """The publication of `distribution` at the root prefix, or None."""
        for pub in self.json("publish", "list", "-json") or []:
            if pub.get("Prefix") == "." and pub.get("Distribution") == distribution:
                return pub
        return None

    def held_sha256(self, package: str, version: str, architecture: str) -> set[str]:
        """SHA-256 of every file aptly holds under this name, version and architecture."""
        query = f"Name (= {package}), $Version (= {version}), $Architecture (= {architecture})"
        out = self("package", "show", query)
        return {line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("SHA256:")}


def package_key(fields: dict[str, str]) -> str:
    """aptly's short name of a package in a repository: name_version_architecture."""
    return f"{fields['Package']}_{fields['Version']}_{fields['Architecture']}"


def snapshot_name(repo: str, existing: set[str], now: datetime.datetime) -> str:
    base = f"{repo}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    name, n = base, 1
    while name in existing:
        n += 1
        name = f"{base}-{n}"
    return name


def plan(aptly: Aptly, run, debs: list[str]) -> list[dict]:
    """Check the whole batch first: what each file is and whether it is new."""
    entries, seen = [], {}
    for deb in debs:
        if not os.path.isfile(deb):
            raise PublishError(f"{deb} does not exist on the repository host")
        fields = deb_fields(run, deb)
        sha = sha256_file(deb)
        entry = {
            "package": fields["Package"],
            "version": fields["Version"],
            "architecture": fields["Architecture"],
            "sha256": sha,
            "path": deb,
            "key": package_key(fields),
        }
        label = f"{entry['package']} {entry['version']} ({entry['architecture']})"
        if seen.get(entry["key"], sha) != sha:
            raise PublishError(f"{label}: two different files in this batch; build each version once")
        seen[entry["key"]] = sha
        held = aptly.held_sha256(entry["package"], entry["version"], entry["architecture"])
        if held - {sha}:
            raise PublishError(
                f"{label} is already published from a different file (sha256 {', '.join(sorted(held - {sha}))}); "
                f"a published version must never change: raise the version and build again"
            )
        entries.append(entry)
    return entries


def publish(run, params: dict, check_mode: bool = False, now: datetime.datetime | None = None) -> dict:
    aptly = Aptly(run, params["config"])
    repo, dist = params["repo"], params["distribution"]
    changed = False
    repo_exists = repo in aptly.repos()
    current = aptly.repo_packages(repo) if repo_exists else set()
    entries = plan(aptly, run, params["debs"])
    new = [e for e in entries if e["key"] not in current]
    for entry in entries:
        entry["action"] = "added" if entry in new else "unchanged"
    if not repo_exists:
        changed = True
        if not check_mode:
            aptly("repo", "create", f"-distribution={dist}", f"-component={params['component']}", repo)
    if new:
        changed = True
        if not check_mode:
            aptly("repo", "add", repo, *sorted({e["path"] for e in new}))
    pub = aptly.publication(dist)
    previous = ""
    if pub is not None:
        sources = pub.get("Sources") or []
        if pub.get("SourceKind") != "snapshot" or len(sources) != 1:
            raise PublishError(
                f"the publication of {dist} is not a single snapshot ({pub.get('SourceKind')}); "
                f"it was made by hand: drop it (`aptly publish drop {dist}`) and run this again"
            )
        previous = sources[0]["Name"]
        for key in ("origin", "label"):
            if params.get(key) and pub.get(key.capitalize(), "") != params[key]:
                raise PublishError(
                    f"the publication of {dist} has {key.capitalize()} {pub.get(key.capitalize())!r}, not "
                    f"{params[key]!r}: aptly sets it when it first publishes; keep the old value, or drop the "
                    f"publication (`aptly publish drop {dist}`) and run this again, which clients see as a new "
                    f"Release file"
                )
    wanted = current | {e["key"] for e in new}
    if pub is not None and aptly.snapshot_packages(previous) == wanted:
        return {"changed": changed, "packages": strip(entries), "snapshot": previous, "previous_snapshot": previous}
    changed = True
    snapshot = snapshot_name(repo, aptly.snapshots(), now or datetime.datetime.now(datetime.UTC))
    if not check_mode:
        aptly("snapshot", "create", snapshot, "from", "repo", repo)
        sign = [f"-gpg-key={params['gpg_key']}"] if params.get("gpg_key") else ["-skip-signing"]
        if pub is None:
            extra = [f"-{k}={params[k]}" for k in ("origin", "label") if params.get(k)]
            aptly(
                "publish",
                "snapshot",
                *sign,
                *extra,
                f"-distribution={dist}",
                f"-component={params['component']}",
                snapshot,
            )
        else:
            aptly("publish", "switch", *sign, dist, snapshot)
    return {"changed": changed, "packages": strip(entries), "snapshot": snapshot, "previous_snapshot": previous}


def strip(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("path", "key")} for e in entries]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "default": "/etc/aptly.conf"},
            "repo": {"type": "str", "required": True},
            "distribution": {"type": "str", "required": True},
            "component": {"type": "str", "default": "main"},
            "origin": {"type": "str"},
            "label": {"type": "str"},
            "gpg_key": {"type": "str"},
            "gnupghome": {"type": "path"},
            "debs": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    environ = {"GNUPGHOME": params["gnupghome"]} if params["gnupghome"] else {}

    def run(args):
        return module.run_command(args, environ_update=environ)

    if not os.path.isfile(params["config"]):
        module.fail_json(msg=f"{params['config']} does not exist: run the apt_repo role on this host first")
    try:
        result = publish(run, params, module.check_mode)
    except PublishError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
