"""The .deb packages: reproducible, lintian-clean, and shaped as the hosts expect."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = [sys.executable, str(ROOT / "packaging" / "build.py")]
HOST_COMMANDS = [
    "sevenleague-alert-journal",
    "sevenleague-check-web-config",
    "sevenleague-envoy-secrets",
    "sevenleague-openbao-check-config",
    "sevenleague-pki",
    "sevenleague-rsyslog-stats",
]


def build(out: Path, *names: str) -> dict[str, str]:
    subprocess.run([*BUILD, "--out", str(out), *names], check=True, capture_output=True, text=True)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.deb"))}


@pytest.fixture(scope="module")
def all_debs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("debs")
    build(out)
    return out


def test_every_package_is_built(all_debs):
    names = sorted(p.name.split("_")[0] for p in all_debs.glob("*.deb"))
    assert names == ["envoy", "frontend", "greeter", "openbao", "sevenleague-host"]


def test_same_sources_give_byte_identical_packages(tmp_path, all_debs, monkeypatch):
    # A second build in another folder, at another time and umask, of the same commit. Envoy
    # stands for both platform binaries (openbao is built the same way, and takes longest).
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    again = build(tmp_path, "greeter", "frontend", "envoy", "sevenleague-host")
    first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in all_debs.glob("*.deb")}
    assert again == {name: digest for name, digest in first.items() if not name.startswith("openbao_")}
    assert len(again) == 4


def test_an_unchanged_package_is_not_rewritten(tmp_path):
    build(tmp_path, "greeter")
    result = subprocess.run([*BUILD, "--out", str(tmp_path), "greeter"], check=True, capture_output=True, text=True)
    assert result.stdout.startswith("unchanged ")


def test_lintian_finds_nothing_above_info(all_debs):
    assert shutil.which("lintian"), "lintian is missing: run make deps"
    result = subprocess.run(
        [
            "lintian",
            "--fail-on",
            "warning",
            "-L",
            ">=warning",
            "--tag-display-limit",
            "0",
            # Upstream's binaries are shipped as built: spelling in their strings and the
            # libraries linked into them are nothing the packaging could change, and those two
            # scans are two thirds of lintian's time on the 100-200 MB binaries.
            "--dont-check-part",
            "binaries/spelling,libraries/embedded",
            *map(str, sorted(all_debs.glob("*.deb"))),
        ],
        capture_output=True,
        text=True,
    )
    findings = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert findings == [] and result.returncode == 0, result.stdout + result.stderr


def fields(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-I", str(deb)], check=True, capture_output=True, text=True).stdout


def contents(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("app", ["greeter", "frontend"])
def test_app_package_ships_script_config_and_hardened_unit(all_debs, app):
    [deb] = all_debs.glob(f"{app}_*.deb")
    listing = contents(deb)
    for path in (
        f"./usr/lib/{app}/{app}.py",
        f"./usr/lib/{app}/svc.py",
        f"./etc/{app}/{app}.json",
        f"./lib/systemd/system/{app}.service",
    ):
        assert path in listing
    assert "root/root" in listing and "0/0" not in listing.split()[1]
    control = subprocess.run(["dpkg-deb", "-e", str(deb), str(all_debs / f"{app}-ctl")], check=True)
    assert control.returncode == 0
    assert (all_debs / f"{app}-ctl" / "conffiles").read_text() == f"/etc/{app}/{app}.json\n"
    unit = (ROOT / "packaging" / app / f"{app}.service").read_text()
    for setting in (f"User={app}", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet="):
        assert setting in unit


@pytest.mark.parametrize(("name", "binary"), [("envoy", "./usr/bin/envoy"), ("openbao", "./usr/bin/bao")])
def test_platform_package_carries_the_wheel_binary(all_debs, name, binary):
    [deb] = all_debs.glob(f"{name}_*.deb")
    assert binary in contents(deb)
    assert "Architecture: amd64" in fields(deb)


def test_the_host_tools_ship_the_collections_shared_code_and_every_command_runs(all_debs, tmp_path):
    [deb] = all_debs.glob("sevenleague-host_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    dist = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    # One policy, one OpenBao client, one way to write a file: the controller's modules' own, byte for byte.
    shared = Path("ansible_collections/sevenleague/platform/plugins/module_utils")
    for name in ("pki.py", "pki_certs.py", "openbao.py", "fileio.py"):
        assert (dist / shared / name).read_bytes() == (ROOT / "collections" / shared / name).read_bytes(), name
    # Each command starts from the package alone (not from the checkout): its imports resolve there.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(dist), "PYTHONDONTWRITEBYTECODE": "1"}
    commands = sorted(p.name for p in (tmp_path / "usr" / "sbin").iterdir())
    assert commands == HOST_COMMANDS
    for command in commands:
        path = tmp_path / "usr" / "sbin" / command
        assert path.stat().st_mode & 0o777 == 0o755
        ran = subprocess.run(
            [sys.executable, str(path), "--help"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert "ImportError" not in ran.stderr and "ModuleNotFoundError" not in ran.stderr, (command, ran.stderr)
    control = fields(deb)
    assert "Architecture: all" in control and "python3-cryptography" in control
    assert "Replaces: sevenleague-pki (<< 2)" in control and "Breaks: sevenleague-pki (<< 2)" in control
    version = next(line.split(": ", 1)[1] for line in control.splitlines() if line.strip().startswith("Version: "))
    defaults = (ROOT / "roles" / "pki" / "defaults" / "main.yml").read_text()
    assert f"pki_tool_version: {version}\n" in defaults, "bump pki_tool_version with the tool's __version__"
    # A tool, not a service: no maintainer scripts.
    listed = subprocess.run(["dpkg-deb", "-I", str(deb)], check=True, capture_output=True, text=True).stdout
    assert "postinst" not in listed and "prerm" not in listed
