"""The supported_release action: which hosts a role refuses, and what it says."""

from pathlib import Path

import yaml
from supported_release import check, describe, supported

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = supported(yaml.safe_load((ROOT / "roles" / "common" / "meta" / "main.yml").read_text()))


def facts(distribution, release, version):
    return {"distribution": distribution, "distribution_release": release, "distribution_version": version}


def test_debian_12_and_13_pass():
    assert check(facts("Debian", "bookworm", "12.12"), PLATFORMS, "common", "h") is None
    assert check(facts("Debian", "trixie", "13.8"), PLATFORMS, "common", "h") is None


def test_debian_11_is_refused_with_the_supported_releases_named():
    message = check(facts("Debian", "bullseye", "11"), PLATFORMS, "common", "old1.example")
    assert message.startswith(
        "old1.example runs Debian 11 (bullseye); the common role supports Debian 12 (bookworm) and 13 (trixie) only."
    )


def test_another_distribution_is_refused_even_with_a_known_codename():
    assert "Ubuntu 24.04 (noble)" in check(facts("Ubuntu", "noble", "24.04"), PLATFORMS, "pki", "h")
    assert check(facts("Ubuntu", "trixie", "13"), PLATFORMS, "pki", "h") is not None


def test_testing_without_a_version_number_is_refused():
    message = check(facts("Debian", "forky", ""), PLATFORMS, "common", "h")
    assert "runs Debian 14 (forky)" in message


def test_release_names_read_as_numbers_and_codenames():
    assert describe(["bookworm"]) == "12 (bookworm)"
    assert describe(["bullseye", "bookworm", "trixie"]) == "11 (bullseye), 12 (bookworm) and 13 (trixie)"


# The layer playbooks site.yml imports: each can also run on its own.
LAYERS = [p["ansible.builtin.import_playbook"] for p in yaml.safe_load((ROOT / "site.yml").read_text())]


def test_every_layer_playbook_reads_the_hosts_before_its_first_play():
    """Run on its own, a layer playbook must not take what a host is from the fact cache alone
    (playbooks/facts.yml gathers this run's facts first)."""
    for layer in LAYERS[1:]:
        plays = yaml.safe_load((ROOT / layer).read_text())
        assert plays[0].get("ansible.builtin.import_playbook") == "facts.yml", layer
    [preflight] = yaml.safe_load((ROOT / LAYERS[0]).read_text())[:1]
    setup, noted = preflight["tasks"][:2]
    assert "ansible.builtin.setup" in setup
    assert noted["ansible.builtin.set_fact"] == {"sevenleague_facts_of_this_run": True}
