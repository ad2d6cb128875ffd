"""Checks shared by the tests of the modules in library/: documentation and an ad hoc run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def assert_documented(mod) -> None:
    """DOCUMENTATION, EXAMPLES and RETURN parse, and the options are the argument spec's, field for field."""
    documentation = yaml.safe_load(mod.DOCUMENTATION)
    assert yaml.safe_load(mod.EXAMPLES) and yaml.safe_load(mod.RETURN)
    options = documentation["options"]
    assert set(options) == set(mod.ARGUMENT_SPEC)
    for name, spec in mod.ARGUMENT_SPEC.items():
        for field in ("type", "default", "choices", "elements"):
            assert options[name].get(field) == spec.get(field), f"{name}.{field}"
        assert bool(options[name].get("required")) == bool(spec.get("required")), f"{name}.required"


def run_module(module: str, args: dict, tmp_path: Path) -> tuple[dict, str]:
    """Run `module` ad hoc on the implicit localhost, as a play delegating to it would.

    Returns the module's result and everything Ansible printed (to check secrets stay out of it).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "BAO_"))}
    env.update(
        {
            "ANSIBLE_LIBRARY": "library",
            "ANSIBLE_COLLECTIONS_PATH": "collections",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-M", "library", "-m", module, "-a", json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # ansible.cfg's profile_tasks callback prints around the JSON document.
    document, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("\n{") + 1 :])
    return document["plays"][0]["tasks"][0]["hosts"]["localhost"], proc.stdout + proc.stderr
