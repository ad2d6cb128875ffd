"""The AWX / AAP execution environment: its build context is made offline,
and it pins what requirements.txt pins."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EE = ROOT / "execution-environment.yml"


def pins(lines):
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_every_ee_pin_matches_requirements_txt():
    ee = yaml.safe_load(EE.read_text())
    deps = ee["dependencies"]
    wanted = pins([*deps["python"], deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"]])
    pinned = {
        name.lower(): version for name, version in pins((ROOT / "requirements.txt").read_text().splitlines()).items()
    }
    assert {name.lower(): version for name, version in wanted.items()} == {
        name.lower(): pinned[name.lower()] for name in wanted
    }
    # The strategy ansible.cfg names must be in the image, or jobs fall back to linear.
    assert "mitogen" in {name.lower() for name in wanted}


def test_ansible_builder_creates_the_build_context_offline(tmp_path):
    context = tmp_path / "context"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-builder")), "create", "-f", str(EE), "-c", str(context)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # No proxy that could reach anything: create must not need the network.
        env={"PATH": "/usr/bin:/bin", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    containerfile = (context / "Containerfile").read_text()
    assert "ansible-core==2.19.14" in containerfile
    assert "requirements.yml" in containerfile
    python = (context / "_build" / "requirements.txt").read_text()
    assert "mitogen==0.3.54" in python and "cryptography==" in python
    assert "dpkg" in (context / "_build" / "bindep.txt").read_text()
