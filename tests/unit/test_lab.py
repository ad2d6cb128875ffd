"""The lab tool's reading of the inventory and of the machine's apt sources."""

import ipaddress
import subprocess
from pathlib import Path

import images
import pytest

import lab


def test_lab_inventory_gives_every_host_a_unique_address_in_the_subnet():
    cfg = lab.lab_config()
    subnet = ipaddress.ip_network(cfg["subnet"])
    addresses = list(cfg["hosts"].values())
    assert len(addresses) == len(set(addresses))
    assert all(ipaddress.ip_address(a) in subnet for a in addresses)
    # The fleet of the design: one ca, repo, logs and monitoring host, two app hosts.
    assert len(cfg["hosts"]) >= 6


def test_container_names_are_short_and_prefixed():
    assert lab.container_name("app1.sevenleague.test") == "sl-app1"


def test_mirror_from_deb822_sources(tmp_path):
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "# comment\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
    )
    assert images.debian_mirror([sources]) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    sources = tmp_path / "sources.list"
    sources.write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://mirror.example/debian bookworm main\n"
    )
    assert images.debian_mirror([tmp_path / "missing", sources]) == "http://mirror.example/debian"


def test_mirror_falls_back_to_the_debian_redirector(tmp_path):
    assert images.debian_mirror([tmp_path / "missing"]) == "http://deb.debian.org/debian"


@pytest.mark.parametrize(
    "path",
    [
        "inventories/site/.pki/root.key",
        "inventories/site/.pki-next/intermediate.key",
        "inventories/site/.pki-previous/root.key",
        "inventories/site/.pki-retired/20260101T000000Z/root.key",
        "inventories/site/.openbao/init.vault",
        "inventories/site/.apt/signing/private-keys-v1.d/0123.key",
        ".lab/openbao-passphrase",
    ],
)
def test_ca_keys_and_openbao_secrets_are_never_committed(path):
    # git check-ignore exits 0 when the path is ignored.
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, f"{path} is not ignored by .gitignore"


def test_lab_hosts_run_both_releases_and_new_hosts_get_debian_13():
    cfg = lab.lab_config()
    assert set(cfg["releases"]) == set(cfg["hosts"])
    assert set(cfg["releases"].values()) == {"bookworm", "trixie"}
    assert lab.DEFAULT_RELEASE == "trixie"
    assert images.host_image("trixie") == "localhost/sevenleague-node:trixie"


def test_an_unknown_lab_release_names_the_host_and_the_fix(tmp_path, monkeypatch):
    inventory = tmp_path / "lab"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "group_vars" / "all" / "lab.yml").write_text("lab_network: n\nlab_subnet: 10.0.0.0/24\n")
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    old.example:\n      ansible_host: 10.0.0.5\n      lab_release: bullseye\n"
    )
    monkeypatch.setattr(lab, "INVENTORY", inventory)
    with pytest.raises(SystemExit, match="old.example has lab_release 'bullseye'; the lab builds trixie and bookworm"):
        lab.lab_config()


def _lab_inventory(tmp_path, monkeypatch, **files):
    inventory = tmp_path / "lab"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "group_vars" / "all" / "lab.yml").write_text("lab_network: n\nlab_subnet: 10.0.0.0/24\n")
    for name, text in files.items():
        (inventory / name.replace("_", ".")).write_text(text)
    monkeypatch.setattr(lab, "INVENTORY", inventory)


def test_every_inventory_file_of_the_directory_adds_its_hosts(tmp_path, monkeypatch):
    """As Ansible reads a directory: a host added in a file of its own is a lab host too."""
    _lab_inventory(
        tmp_path,
        monkeypatch,
        hosts_yml="all:\n  hosts:\n    a.example:\n      ansible_host: 10.0.0.5\n",
        added_yml="all:\n  children:\n    apps:\n      hosts:\n        b.example:\n"
        "          ansible_host: 10.0.0.6\n          lab_release: bookworm\n",
        notes_txt="not an inventory file\n",
    )
    cfg = lab.lab_config()
    assert cfg["hosts"] == {"b.example": "10.0.0.6", "a.example": "10.0.0.5"}
    assert cfg["releases"] == {"a.example": "trixie", "b.example": "bookworm"}


def test_a_host_on_a_taken_address_is_refused_naming_both(tmp_path, monkeypatch):
    _lab_inventory(
        tmp_path,
        monkeypatch,
        hosts_yml="all:\n  hosts:\n    a.example:\n      ansible_host: 10.0.0.5\n",
        twin_yml="all:\n  hosts:\n    twin.example:\n      ansible_host: 10.0.0.5\n",
    )
    with pytest.raises(SystemExit, match="twin.example and a.example both have ansible_host 10.0.0.5"):
        lab.lab_config()
