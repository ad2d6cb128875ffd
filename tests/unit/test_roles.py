"""Conventions every role keeps (STYLE.md): the argument spec is the
contract, defaults match it key for key, the README is generated from it."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())


def entry_points(role):
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return {name: entry.get("options") or {} for name, entry in specs["argument_specs"].items()}


def spec_options(role):
    """Every option of every entry point; the non-required spec wins, since it carries the default."""
    options = {}
    for entry in entry_points(role).values():
        for name, spec in entry.items():
            spec = spec or {}
            if name not in options or options[name].get("required"):
                options[name] = spec
    return options


@pytest.mark.parametrize("role", ROLES)
def test_role_has_the_standard_parts(role):
    base = ROOT / "roles" / role
    for part in (
        "meta/argument_specs.yml",
        "meta/main.yml",
        "defaults/main.yml",
        "tasks/main.yml",
        "tasks/preflight.yml",
        "README.md",
        "molecule/default/molecule.yml",
        "molecule/default/converge.yml",
    ):
        assert (base / part).exists(), f"roles/{role}/{part} is missing"
    assert list((base / "molecule" / "default" / "tests").glob("test_*.py")), f"{role} has no testinfra tests"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_match_the_argument_spec_key_for_key(role):
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    options = spec_options(role)
    assert sorted(defaults) == sorted(name for name, spec in options.items() if not (spec or {}).get("required"))
    for name, value in defaults.items():
        assert options[name].get("default") == value, f"{role}: {name} default differs between defaults and spec"
    # An option repeated in another entry point must say the same default.
    for entry, entry_options in entry_points(role).items():
        for name, spec in entry_options.items():
            if "default" in (spec or {}):
                assert spec["default"] == defaults.get(name), f"{role}: {name} default differs in {entry}"


@pytest.mark.parametrize("role", ROLES)
def test_variables_carry_the_role_prefix(role):
    for name in spec_options(role):
        assert name.startswith(f"{role}_"), f"{name} should start with {role}_"


def platforms(role):
    meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())
    return {p["name"]: p["versions"] for p in meta["galaxy_info"]["platforms"]}


@pytest.mark.parametrize("role", ROLES)
def test_every_role_supports_debian_12_and_13_and_checks_it_first(role):
    assert platforms(role) == {"Debian": ["bookworm", "trixie"]}
    preflight = yaml.safe_load((ROOT / "roles" / role / "tasks" / "preflight.yml").read_text())
    modules = [next(k for k in task if k not in ("name", "tags", "when", "vars")) for task in preflight]
    # After the type check, before any other task of the role.
    assert modules[:2] == ["strict_types", "supported_release"], modules[:3]


def release_vars(role):
    """A role's per-release vars files (vars/<release>.yml), by release."""
    return {p.stem: p for p in (ROOT / "roles" / role / "vars").glob("*.yml") if p.stem != "main"}


# The roles whose behaviour differs between Debian releases; the others have no per-release file.
VARIES_BY_RELEASE = [role for role in ROLES if release_vars(role)]


@pytest.mark.parametrize("role", VARIES_BY_RELEASE)
def test_release_differences_live_in_one_vars_file_per_release(role):
    """A role that varies by release has a vars file for every release it supports, with the same keys."""
    files = release_vars(role)
    assert sorted(files) == sorted(platforms(role)["Debian"])
    keys = {release: sorted(yaml.safe_load(path.read_text()) or {}) for release, path in files.items()}
    assert len({tuple(k) for k in keys.values()}) == 1, keys
    assert next(iter(keys.values())), f"{role}: the per-release vars files set nothing"


@pytest.mark.parametrize("role", VARIES_BY_RELEASE)
def test_the_per_release_vars_file_is_loaded_by_the_host_release(role):
    """The files are read: the role's first tasks load vars/<the host's release>.yml."""
    preflight = yaml.safe_load((ROOT / "roles" / role / "tasks" / "preflight.yml").read_text())
    loads = [task["ansible.builtin.include_vars"] for task in preflight if "ansible.builtin.include_vars" in task]
    assert loads == ["{{ ansible_facts['distribution_release'] }}.yml"], loads


@pytest.mark.parametrize("role", ROLES)
def test_roles_do_not_depend_on_each_other_through_meta(role):
    meta = ROOT / "roles" / role / "meta" / "main.yml"
    if meta.exists():
        assert not (yaml.safe_load(meta.read_text()) or {}).get("dependencies"), (
            f"{role}: order roles in playbooks, not through meta dependencies"
        )


@pytest.mark.parametrize(
    "template", sorted((ROOT / "roles").glob("*/templates/*.j2")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_templates_say_they_are_managed(template):
    text = template.read_text()
    # Macro libraries render nothing themselves.
    if text.lstrip().startswith("{#") and "{% macro" in text:
        return
    assert "ansible_managed" in text.split("\n", 3)[0] + text.split("\n", 3)[1]


def test_readmes_are_generated_from_the_current_specs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "role_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
