"""The lab's images: a base per Debian release from debootstrap, and the host images built on it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from podman_cli import LAB, RELEASES, log, podman

# What a host needs before Ansible can manage it: Python, and python3-apt for
# the apt module (under Mitogen it cannot install python3-apt itself).
BASE_PACKAGES = ("python3", "python3-apt", "systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates")


def base_image(release: str) -> str:
    return f"localhost/sevenleague-base:{release}"


def host_image(release: str) -> str:
    return f"localhost/sevenleague-node:{release}"


def bare_image(release: str) -> str:
    """The host image without Python (`lab_image: bare`), for the pyinfra bootstrap."""
    return f"localhost/sevenleague-bare:{release}"


# What a host's `lab_image` may name: the image Ansible manages as it is, or a bare one.
IMAGES = ("node", "bare")


APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def debian_mirror(candidates=APT_SOURCES) -> str:
    """The Debian mirror this machine already uses, so the lab needs no other."""
    for path in candidates:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if not words or line.lstrip().startswith("#"):
                continue
            if words[0] == "URIs:" and "security" not in words[1]:
                return words[1]
            if words[0] == "deb" and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
            if words[0] == "URIs:" or words[0] == "deb":
                continue
    return "http://deb.debian.org/debian"


def context_digest() -> str:
    h = hashlib.sha256()
    for name in ("Containerfile", "ssh-host-keys.service", "dpkg-lab.cfg", "apt-lab.conf"):
        h.update((LAB / name).read_bytes())
    return h.hexdigest()[:16]


def image_label(image: str, label: str) -> str:
    out = podman("image", "inspect", image, "--format", f'{{{{ index .Labels "{label}" }}}}', check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def build_images(rebuild: bool = False, releases=RELEASES) -> None:
    """Both releases' images, so Molecule and the lab find whichever they name."""
    for release in releases:
        build_release_images(release, rebuild)


def build_release_images(release: str, rebuild: bool) -> None:
    base, host = base_image(release), host_image(release)
    build_base_image(release, rebuild)
    # A new base image makes a new host image too.
    digest = context_digest() + podman("image", "inspect", base, "--format", "{{ .Id }}").stdout.strip()[:12]
    if rebuild or image_label(host, "io.sevenleague.context") != digest:
        log(f"building {host}")
        podman(
            "build",
            "--build-arg",
            f"RELEASE={release}",
            "--label",
            f"io.sevenleague.context={digest}",
            "-t",
            host,
            "-f",
            str(LAB / "Containerfile"),
            str(LAB),
            capture=False,
        )


def build_bare_image(release: str, rebuild: bool = False) -> str:
    """The host image of `release` without Python; built when a host asks for it."""
    build_release_images(release, rebuild)
    bare, host = bare_image(release), host_image(release)
    digest = (
        hashlib.sha256((LAB / "Containerfile.bare").read_bytes()).hexdigest()[:16]
        + podman("image", "inspect", host, "--format", "{{ .Id }}").stdout.strip()[:12]
    )
    if rebuild or image_label(bare, "io.sevenleague.context") != digest:
        log(f"building {bare}")
        podman(
            "build",
            "--build-arg",
            f"RELEASE={release}",
            "--label",
            f"io.sevenleague.context={digest}",
            "-t",
            bare,
            "-f",
            str(LAB / "Containerfile.bare"),
            str(LAB),
            capture=False,
        )
    return bare


def build_base_image(release: str, rebuild: bool = False) -> str:
    """A debootstrapped Debian `release` with systemd and Python, no sshd; returns its name.
    Any release the mirror has: the system tests also build an unsupported one."""
    packages = ",".join(BASE_PACKAGES)
    base = base_image(release)
    if rebuild or image_label(base, "io.sevenleague.packages") != packages:
        if shutil.which("debootstrap") is None:
            sys.exit("lab: debootstrap is missing: run `make deps` (or apt-get install debootstrap)")
        mirror = debian_mirror()
        log(f"building {base} with debootstrap from {mirror} (about a minute)")
        with tempfile.TemporaryDirectory(prefix="sl-rootfs-") as rootfs:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={packages}", release, rootfs, mirror],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            podman(
                "import",
                "--change",
                "CMD /sbin/init",
                "--change",
                f"LABEL io.sevenleague.packages={packages}",
                "-",
                base,
                stdin=tar.stdout,
            )
            if tar.wait() != 0:
                sys.exit("lab: tar of the debootstrap tree failed")
    return base
