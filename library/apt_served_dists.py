#!/usr/bin/python
"""Serve a signed copy of aptly's indexes, switched in by one rename."""

from __future__ import annotations

DOCUMENTATION = r"""
module: apt_served_dists
short_description: Switch the served dists/<suite> to a complete, signed copy of aptly's indexes
description:
  - Runs on the repository host. aptly publishes unsigned indexes in I(source); the controller signs
    their Release file. This module checks that every file the signed Release lists is in I(source)
    with that size and SHA-256, copies I(source) into a new directory under I(store), writes
    C(Release), C(InRelease) and C(Release.gpg) there, checks the copy again, and points the symbolic
    link I(link) at it with one rename. A client therefore reads either the old signed tree or the new
    one, never an InRelease that does not match the files next to it.
  - Nothing changes when I(link) already serves this I(inrelease). The copy served before stays (a
    client halfway through an update still finds its files); older ones are removed.
options:
  source:
    description: aptly's C(dists/<suite>) directory.
    type: path
    required: true
  link:
    description: The served C(dists/<suite>), a symbolic link this module owns.
    type: path
    required: true
  store:
    description: Directory holding the signed copies.
    type: path
    required: true
  release:
    description: The Release file the controller signed.
    type: str
    required: true
  inrelease:
    description: The clearsigned Release file.
    type: str
    required: true
  release_gpg:
    description: The detached signature of I(release); empty keeps the served one (it signs the same
      Release).
    type: str
    default: ""
author: sevenleague
"""

EXAMPLES = r"""
- name: Serve the signed indexes
  apt_served_dists:
    source: /srv/apt/public/dists/sevenleague
    link: /srv/apt/served/dists/sevenleague
    store: /srv/apt/signed
    release: "{{ __signed.release }}"
    inrelease: "{{ __signed.inrelease }}"
    release_gpg: "{{ __signed.release_gpg }}"
"""

RETURN = r"""
path:
  description: The signed copy I(link) points at after this run.
  returned: always
  type: str
previous:
  description: The copy I(link) pointed at before (empty when there was none).
  returned: always
  type: str
"""

import hashlib
import os
import shutil

from ansible.module_utils.basic import AnsibleModule


class ServeError(Exception):
    """A problem the operator must fix; the message says what."""


def listed(release: str) -> dict[str, tuple[str, int]]:
    """The SHA256 section of a Release file: relative path -> (sha256, size)."""
    files, inside = {}, False
    for line in release.splitlines():
        if line[:1] not in (" ", "\t"):
            inside = line.split(":")[0] == "SHA256"
            continue
        if inside:
            sha, size, path = line.split()
            files[path] = (sha, int(size))
    return files


def mismatches(directory: str, files: dict[str, tuple[str, int]]) -> list[str]:
    """The listed files that are absent from `directory` or differ from the listing."""
    wrong = []
    for path, (sha, size) in sorted(files.items()):
        full = os.path.join(directory, path)
        if not os.path.isfile(full) or os.path.getsize(full) != size:
            wrong.append(path)
            continue
        with open(full, "rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != sha:
                wrong.append(path)
    return wrong


def read(path: str) -> str:
    """A file's text, or '' when it does not exist."""
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o644)


def serve(params: dict, check_mode: bool = False) -> dict:
    link, store, source = params["link"], params["store"], params["source"]
    files = listed(params["release"])
    if not files:
        raise ServeError("the signed Release lists no files (no SHA256 section): it is not aptly's")
    previous = os.path.realpath(link) if os.path.islink(link) else ""
    if os.path.exists(link) and not previous:
        raise ServeError(f"{link} is not a symbolic link: move it away, the role serves signed copies there")
    served = os.path.join(previous, "InRelease") if previous else ""
    if served and read(served) == params["inrelease"]:
        return {"changed": False, "path": previous, "previous": previous}
    wrong = mismatches(source, files)
    if wrong:
        raise ServeError(
            f"aptly's indexes in {source} are not the ones the controller signed ({', '.join(wrong[:5])}): "
            f"another publish ran in between; run again"
        )
    name = os.path.basename(link) + "-" + hashlib.sha256(params["inrelease"].encode()).hexdigest()[:16]
    target = os.path.join(store, name)
    if check_mode:
        return {"changed": True, "path": target, "previous": previous}
    building = target + ".new"
    shutil.rmtree(building, ignore_errors=True)
    shutil.copytree(source, building, symlinks=True)
    write(os.path.join(building, "Release"), params["release"])
    write(os.path.join(building, "InRelease"), params["inrelease"])
    detached = params["release_gpg"] or (read(os.path.join(previous, "Release.gpg")) if previous else "")
    if detached:
        write(os.path.join(building, "Release.gpg"), detached)
    wrong = mismatches(building, files)
    if wrong:
        shutil.rmtree(building)
        raise ServeError(f"aptly changed its indexes while they were copied ({', '.join(wrong[:5])}): run again")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(building, target)
    os.chmod(target, 0o755)
    swap = link + ".new"
    if os.path.lexists(swap):
        os.unlink(swap)
    os.symlink(target, swap)
    os.replace(swap, link)
    prefix = os.path.basename(link) + "-"
    for entry in os.listdir(store):
        path = os.path.join(store, entry)
        if entry.startswith(prefix) and path not in (target, previous):
            shutil.rmtree(path, ignore_errors=True)
    return {"changed": True, "path": target, "previous": previous}


ARGUMENT_SPEC = {
    "source": {"type": "path", "required": True},
    "link": {"type": "path", "required": True},
    "store": {"type": "path", "required": True},
    "release": {"type": "str", "required": True},
    "inrelease": {"type": "str", "required": True},
    "release_gpg": {"type": "str", "default": ""},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = serve(module.params, module.check_mode)
    except ServeError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
