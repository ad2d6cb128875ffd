"""Molecule's check step fails when check mode reports a change: the shared config enables the
callback that makes a --check run with a change exit non-zero, and leaves other runs alone."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: A task that reports a change
      ansible.builtin.debug:
        msg: would change
      changed_when: {changes}
    - name: A task that changes nothing
      ansible.builtin.debug:
        msg: unchanged
"""


def molecule_env() -> dict:
    return yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())["provisioner"]["env"]


def play(tmp_path, *args: str, changes: bool) -> subprocess.CompletedProcess:
    """The playbook with the shared config's callback settings, as Molecule's steps run it."""
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(changes=str(changes).lower()))
    settings = molecule_env()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "molecule" / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED=settings["ANSIBLE_CALLBACKS_ENABLED"],
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_NOCOLOR="1",
    )
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local", "play.yml", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_shared_config_enables_the_callback_from_molecule_callback_plugins():
    settings = molecule_env()
    assert settings["ANSIBLE_CALLBACK_PLUGINS"].endswith("/../../molecule/callback_plugins")
    assert "unchanged_in_check_mode" in [name.strip() for name in settings["ANSIBLE_CALLBACKS_ENABLED"].split(",")]


def test_a_change_in_check_mode_fails_the_run_and_names_the_task(tmp_path):
    run = play(tmp_path, "--check", changes=True)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "check mode reported 1 change(s) on converged hosts" in run.stderr
    assert "* [localhost] => A task that reports a change" in run.stderr


@pytest.mark.parametrize(("args", "changes"), [(("--check",), False), ((), True)], ids=["check-clean", "no-check"])
def test_a_clean_check_run_and_a_run_without_check_pass(tmp_path, args, changes):
    run = play(tmp_path, *args, changes=changes)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "check mode reported" not in run.stdout + run.stderr
