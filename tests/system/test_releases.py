"""A host on a Debian release the roles do not support, added to the lab
inventory the way a user adds a host: the preflight names the host and the
supported releases and leaves it out, unchanged; the other hosts go on through
the next layer, and the run ends non-zero.  And the release is read from the
host in this run: a fact cache that says otherwise (a machine rebuilt under an
old name) is not believed.

The host is a real Debian 11 (bullseye) system, debootstrapped like the lab's
images and reached through podman, since it has no sshd.
"""

from __future__ import annotations

import json
from pathlib import Path

import images
import pytest
from conftest import LAB_RELEASES, ROOT, ansible_playbook, layers_playbook

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


# The preflight and the first layer, for the old host and one other: enough to see the others
# go on (site.yml imports both), without a converge of the whole fleet.
FIRST_LAYERS = ["preflight.yml", "baseline.yml"]
OTHER = "app1.sevenleague.test"


def test_a_host_on_an_unsupported_release_is_left_out_and_the_others_go_on(old_host, tmp_path):
    before = state(lab.container_name(OTHER))
    old_before = state(NAME)
    run = ansible_playbook(
        layers_playbook(tmp_path, *FIRST_LAYERS),
        "-i",
        "inventories/lab",
        "-i",
        str(old_host),
        "--limit",
        f"{HOST},{OTHER}",
        log="site-bullseye.log",
    )
    assert run.rc != 0
    assert (
        f"{HOST} runs Debian 11" in run.output
        and "(bullseye)" in run.output
        and "supports Debian 12 (bookworm) and 13 (trixie) only" in run.output
    ), run.output[-3000:]
    # The old host failed once, in the preflight, and changed nothing ...
    assert run.recap[HOST]["failed"] == 1 and run.recap[HOST]["changed"] == 0, run.recap
    assert state(NAME) == old_before
    # ... while the other host went on through the baseline, unchanged since it is converged.
    other = run.recap[OTHER]
    assert other["failed"] == 0 and other["unreachable"] == 0 and other["changed"] == 0, run.recap
    assert "PLAY [Every host trusts the internal repository]" in run.output
    assert state(lab.container_name(OTHER)) == before


def cached_facts(path) -> dict:
    """The facts of a jsonfile cache entry (ansible-core keeps them as a JSON string in a wrapper)."""
    return json.loads(json.loads(path.read_text())["__payload__"])


# The preflight of site.yml, and a layer playbook run on its own (playbooks/facts.yml, which every
# layer playbook imports first; in check mode, so nothing changes).
@pytest.mark.parametrize(
    "playbook", [["playbooks/preflight.yml"], ["playbooks/apps.yml", "--check"]], ids=["preflight", "layer"]
)
def test_the_release_comes_from_the_host_not_from_the_fact_cache(converged, playbook):
    """A cached fact from another machine of the same name (here: app1's cache entry rewritten to
    say Debian 11) does not decide: the playbook reads the host itself and lets it through."""
    [cache] = (ROOT / ".cache" / "facts").glob("*app1.sevenleague.test")
    original = cache.read_text()
    facts = cached_facts(cache)
    facts.update(
        ansible_distribution_release="bullseye",
        ansible_distribution_major_version="11",
        ansible_distribution_version="11.11",
    )
    try:
        cache.write_text(json.dumps({**json.loads(original), "__payload__": json.dumps(facts)}))
        run = ansible_playbook(
            *playbook, "--limit", "app1.sevenleague.test", log=f"stale-cache-{Path(playbook[0]).stem}.log"
        )
    finally:
        if cached_facts(cache).get("ansible_distribution_release") == "bullseye":
            cache.write_text(original)
    assert run.rc == 0, run.output[-3000:]
    assert "runs Debian 11" not in run.output
    assert run.recap["app1.sevenleague.test"]["changed"] == 0, run.recap
    assert cached_facts(cache)["ansible_distribution_release"] == LAB_RELEASES["app1.sevenleague.test"]
