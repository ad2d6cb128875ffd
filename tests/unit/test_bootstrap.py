"""The pyinfra bootstrap's wrapper: what it reads from the inventory, and what it refuses."""

import subprocess
import sys
from pathlib import Path

import pytest

import bootstrap

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("-o UserKnownHostsFile=.lab/ssh/known_hosts -o StrictHostKeyChecking=yes", ".lab/ssh/known_hosts"),
        ("-oUserKnownHostsFile=/etc/ssh/fleet_known_hosts", "/etc/ssh/fleet_known_hosts"),
        ("-o StrictHostKeyChecking=yes", None),
        ("", None),
    ],
)
def test_the_known_hosts_file_comes_from_the_inventorys_ssh_arguments(args, expected):
    assert bootstrap.known_hosts_file({"ansible_ssh_common_args": args}) == expected


def run(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "bootstrap" / "bootstrap.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_host_missing_from_the_inventory_is_named():
    result = run("nosuch.sevenleague.test")
    assert result.returncode != 0
    assert "nosuch.sevenleague.test is not a host of the inventory: add it first" in result.stderr


def test_a_host_without_a_key_to_install_is_refused(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    bare.example:\n      ansible_host: 192.0.2.10\n      ansible_user: deploy\n"
    )
    result = run("-i", str(inventory), "bare.example")
    assert result.returncode != 0
    assert "no public key to authorize for deploy" in result.stderr
