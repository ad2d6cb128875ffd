"""A host on a Debian release the roles do not support, added to the lab
inventory the way a user adds a host: site.yml stops in preflight, names
the host and the supported releases, and changes nothing on any host.

The host is a real Debian 11 (bullseye) system, debootstrapped like the lab's
images and reached through podman, since it has no sshd.
"""

from __future__ import annotations

import images
import pytest
from conftest import LAB_HOSTS, ansible_playbook

import lab

NAME = "sl-old1"
HOST = "old1.sevenleague.test"


@pytest.fixture(scope="module")
def old_host(converged, tmp_path_factory):
    image = images.build_base_image("bullseye")
    lab.podman("rm", "-f", "-t", "0", NAME, check=False)
    try:
        lab.podman(
            "run",
            "-d",
            "--name",
            NAME,
            "--hostname",
            HOST,
            "--label",
            lab.LABEL,
            "--network",
            "none",
            image,
            "sleep",
            "infinity",
        )
        inventory = tmp_path_factory.mktemp("old-host") / "hosts.yml"
        inventory.write_text(
            "all:\n  children:\n    apps:\n      hosts:\n"
            f"        {HOST}:\n          ansible_connection: containers.podman.podman\n"
            f"          ansible_host: {NAME}\n"
        )
        yield inventory
    finally:
        lab.podman("rm", "-f", "-t", "0", NAME, check=False)


def state(name: str) -> str:
    """What the baseline would change first: the apt sources and the installed packages."""
    return lab.podman(
        "exec",
        name,
        "sh",
        "-c",
        "cat /etc/apt/sources.list; ls /etc/apt/sources.list.d; dpkg-query -W -f '${Package} ${Version}\\n'",
    ).stdout


def test_site_stops_in_preflight_on_an_unsupported_release_and_changes_nothing(old_host):
    before = {name: state(lab.container_name(name)) for name in LAB_HOSTS}
    old_before = state(NAME)
    run = ansible_playbook("site.yml", "-i", "inventories/lab", "-i", str(old_host), log="site-bullseye.log")
    assert run.rc != 0
    assert (
        f"{HOST} runs Debian 11" in run.output
        and "(bullseye)" in run.output
        and "supports Debian 12 (bookworm) and 13 (trixie) only" in run.output
    ), run.output[-3000:]
    # The preflight stops every host before any change (any_errors_fatal).
    assert run.recap and all(r["changed"] == 0 for r in run.recap.values()), run.recap
    assert "Write the Debian sources" not in run.output
    assert state(NAME) == old_before
    assert {name: state(lab.container_name(name)) for name in LAB_HOSTS} == before
