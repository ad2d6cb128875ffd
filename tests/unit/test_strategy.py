"""The strategy ansible.cfg names: Mitogen's when it can run, Ansible's linear otherwise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Imports plugins/strategy/mitogen_linear.py (on PYTHONPATH) as Ansible would, optionally with
# ansible_mitogen made unimportable, and prints the classes it is built on.
_PROBE = """
import sys
if sys.argv[1] == "without":
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "ansible_mitogen":
                raise ImportError("No module named 'ansible_mitogen'")
    sys.meta_path.insert(0, Block())
import mitogen_linear as plugin
print(" ".join(f"{c.__module__}.{c.__name__}" for c in plugin.StrategyModule.__mro__))
"""


def probe(mode):
    return subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**os.environ, "PYTHONPATH": str(ROOT / "plugins" / "strategy")},
        capture_output=True,
        text=True,
        check=True,
    )


def test_with_mitogen_the_strategy_is_mitogens_linear():
    mro = probe("with").stdout
    assert "ansible_mitogen.strategy.StrategyMixin" in mro
    assert "ansible.plugins.strategy.linear.StrategyModule" in mro


def test_without_mitogen_the_strategy_is_ansibles_linear_with_a_warning():
    result = probe("without")
    assert result.stdout.split()[0] == "ansible.plugins.strategy.linear.StrategyModule"
    assert "mitogen" not in result.stdout
    assert "running the linear strategy instead" in result.stdout + result.stderr


def test_ansible_cfg_uses_it_and_keeps_facts_out_of_the_variables():
    cfg = (ROOT / "ansible.cfg").read_text()
    assert "\nstrategy = mitogen_linear\n" in cfg and "\nstrategy_plugins = plugins/strategy\n" in cfg
    assert "\ninject_facts_as_vars = False\n" in cfg
    # Molecule writes an ansible.cfg of its own: the shared config sets the same through the environment.
    molecule_env = yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())["provisioner"]["env"]
    assert molecule_env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert molecule_env["ANSIBLE_INJECT_FACT_VARS"] == "false"


ASYNC_PLAYBOOK = """
- name: A play with an async task
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start a job
      ansible.builtin.command: sleep 1
      async: 30
      poll: 0
      register: job
    - name: Wait for it
      ansible.builtin.async_status:
        jid: "{{ job.ansible_job_id }}"
      register: state
      until: state.finished
      retries: 20
      delay: 1

- name: A play without
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run something
      ansible.builtin.command: "true"
"""


def test_a_play_with_async_tasks_runs_without_mitogen_and_finishes(tmp_path):
    # Async jobs can hang under Mitogen with ansible-core 2.19: such a play
    # runs on Ansible's own linear strategy, the others on Mitogen's.
    playbook = tmp_path / "async.yml"
    playbook.write_text(ASYNC_PLAYBOOK)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-vv", str(playbook)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", ANSIBLE_NOCOLOR="1"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "play 'A play with an async task' has async tasks: running it on Ansible's linear strategy" in result.stdout
    assert "play 'A play without' has async tasks" not in result.stdout
    assert re.search(r"^localhost\s+: ok=3\s+changed=\d\s+unreachable=0\s+failed=0", result.stdout, re.M)
