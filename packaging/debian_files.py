"""The Debian files of a package that packaging/build.py writes: control, maintainer scripts, copyright, changelog."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # build.py imports this file: the type is only named here
    from build import Package

import gzip
import subprocess
import textwrap

MAINTAINER = "sevenleague <ops@sevenleague.invalid>"


def control(pkg: Package, installed_kib: int) -> str:
    return "\n".join(
        [
            f"Package: {pkg.name}",
            f"Version: {pkg.full_version}",
            f"Architecture: {pkg.architecture}",
            f"Maintainer: {MAINTAINER}",
            f"Installed-Size: {installed_kib}",
            f"Depends: {', '.join(pkg.depends)}",
            *([f"Replaces: {', '.join(pkg.replaces)}", f"Breaks: {', '.join(pkg.replaces)}"] if pkg.replaces else []),
            "Section: net",
            "Priority: optional",
            "Homepage: https://sevenleague.invalid/",
            f"Description: {pkg.description}",
            *(f" {line}" for line in textwrap.wrap(pkg.long_description, 78)),
            "",
        ]
    )


def postinst(pkg: Package) -> str:
    user = ""
    if pkg.user:
        user = f"    adduser --system --group --quiet --no-create-home --home /nonexistent {pkg.user}\n"
    unit = f"{pkg.name}.service"
    start = ""
    if pkg.start_on_install:
        start = (
            f"    if [ -d /run/systemd/system ]; then\n"
            f"        systemctl --system daemon-reload >/dev/null || true\n"
            f"        deb-systemd-invoke restart {unit} >/dev/null || true\n"
            f"    fi\n"
        )
    else:
        start = (
            f"    if [ -d /run/systemd/system ]; then\n"
            f"        systemctl --system daemon-reload >/dev/null || true\n"
            f"        deb-systemd-invoke try-restart {unit} >/dev/null || true\n"
            f"    fi\n"
        )
    return (
        "#!/bin/sh\nset -e\n\n"
        'if [ "$1" = configure ]; then\n'
        f"{user}"
        f"    deb-systemd-helper unmask {unit} >/dev/null || true\n"
        f"    if deb-systemd-helper --quiet was-enabled {unit}; then\n"
        f"        deb-systemd-helper enable {unit} >/dev/null || true\n"
        f"    else\n"
        f"        deb-systemd-helper update-state {unit} >/dev/null || true\n"
        f"    fi\n"
        f"{start}"
        "fi\n"
    )


def prerm(pkg: Package) -> str:
    return (
        "#!/bin/sh\nset -e\n\n"
        'if [ -d /run/systemd/system ] && [ "$1" = remove ]; then\n'
        f"    deb-systemd-invoke stop {pkg.name}.service >/dev/null || true\n"
        "fi\n"
    )


def postrm(pkg: Package) -> str:
    unit = f"{pkg.name}.service"
    return (
        "#!/bin/sh\nset -e\n\n"
        "if [ -d /run/systemd/system ]; then\n"
        "    systemctl --system daemon-reload >/dev/null || true\n"
        "fi\n"
        'if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then\n'
        f"    deb-systemd-helper mask {unit} >/dev/null || true\n"
        "fi\n"
        'if [ "$1" = purge ] && command -v deb-systemd-helper >/dev/null; then\n'
        f"    deb-systemd-helper purge {unit} >/dev/null || true\n"
        f"    deb-systemd-helper unmask {unit} >/dev/null || true\n"
        "fi\n"
    )


UPSTREAM = {
    "envoy": ("2016-2026 Envoy Project Authors", "Apache-2.0"),
    "openbao": ("2015-2023 HashiCorp, Inc.; 2023-2026 OpenBao Contributors", "MPL-2.0"),
}


def copyright_text(pkg: Package) -> str:
    holder, license_name = UPSTREAM.get(pkg.name, ("2026 sevenleague", "Apache-2.0"))
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        f"Upstream-Name: {pkg.name}\n\n"
        "Files: *\n"
        f"Copyright: {holder}\n"
        f"License: {license_name}\n"
        f" On Debian systems the full text of the license is in /usr/share/common-licenses/{license_name}.\n"
    )


def changelog_gz(pkg: Package, epoch: int) -> bytes:
    date = subprocess.run(
        ["date", "-R", "-u", "-d", f"@{epoch}"], check=True, capture_output=True, text=True
    ).stdout.strip()
    text = (
        f"{pkg.name} ({pkg.full_version}) stable; urgency=medium\n\n"
        f"  * Packaged by sevenleague.\n\n"
        f" -- {MAINTAINER}  {date}\n"
    )
    # mtime=0 and no file name in the header: gzip -n, so the bytes depend on the text alone.
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)
