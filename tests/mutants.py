#!/usr/bin/env python3
"""`make mutants`: mutation testing (mutmut) of the modules that decide who is trusted.

    tests/mutants.py              stage, run mutmut, list the surviving mutants
    tests/mutants.py --show NAME  the diff of one mutant (run after a run)

mutmut changes one thing at a time in a function (a comparison, a constant, a keyword) and runs
the unit tests that reach that function; a mutant no test notices "survives", and tells of a
rule the tests do not hold. tests/mutants.md says why each survivor of the last run is harmless.

mutmut names a mutant after its file's path and finds it again by the name the tests import, so
the two must agree. Here they do not (the collection is imported as ansible_collections..., a
filter by its file name), so this script stages a tree in .cache/mutants: the modules under src/
by their import names, the tests and the files they read, and pyproject.toml's [tool.mutmut]
with a pytest section whose pythonpath puts src/ first. mutmut then copies that tree into
.cache/mutants/mutants and runs there, leaving the repository alone.

Only the functions below are mutated: those that decide (a refusal, a policy, an address, a
TLS or RBAC setting). The metrics, messages and service-map plumbing around them are not.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".cache" / "mutants"
VENV_BIN = ROOT / ".venv" / "bin"
COLLECTION = "ansible_collections/sevenleague/platform/plugins/module_utils"
UTILS = "ansible_collections.sevenleague.platform.plugins.module_utils"

# Import name -> the functions to mutate ("*" for all of the module's).
FUNCTIONS = {
    # The renewal policy and the checks every issued certificate passes.
    f"{UTILS}.pki": [
        "_check_fraction",
        "renew_after",
        "lifetime_decision",
        "_key_id",
        "issuer_problem",
        "renewal_decision",
        "chain_problem",
        "check_issued",
    ],
    # The built-in CA: which keys, names and lifetimes it signs.
    f"{UTILS}.ca_sign": ["*"],
    # Who may call whom: the callers, their addresses and the firewall sources.
    f"{UTILS}.envoy_servicemap": ["_host_address", "check_hosts", "plan"],
    # Envoy's RBAC and TLS on every listener and cluster.
    f"{UTILS}.envoy_xds": ["_rbac", "_tls_params", "_common_tls", "_downstream_tls", "_upstream_tls"],
    # The firewall's sources, and the repository key's fingerprint.
    "firewall": ["*"],
    "openpgp": ["*"],
}

# What the stage holds besides the modules: repository path -> staged path.
STAGED = {
    f"collections/{COLLECTION}": f"src/{COLLECTION}",
    "roles/common/filter_plugins/firewall.py": "src/firewall.py",
    "plugins/filter": "src",
    "collections": "collections",
    "inventories": "inventories",
    "library": "library",
    "packaging/sevenleague-host": "packaging/sevenleague-host",
    "roles": "roles",
    "tests/unit": "tests/unit",
}
# What the staged tests import besides src/ (pyproject.toml's pythonpath, in the stage).
PYTHONPATH = ["src", "library", "packaging/sevenleague-host"]
# Controller state (CA keys, repository pins) and caches stay out of the stage.
SKIP = shutil.ignore_patterns(".*", "__pycache__")


def mutmut_section() -> str:
    """pyproject.toml's [tool.mutmut], as written there."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r"^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", text, re.M | re.S)
    if not match:
        sys.exit("pyproject.toml has no [tool.mutmut] section")
    return match.group(0)


def stage() -> None:
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    for source, target in STAGED.items():
        src, dest = ROOT / source, STAGE / target
        if src.is_dir():
            shutil.copytree(src, dest, ignore=SKIP, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    section = mutmut_section()
    pythonpath = ", ".join(f'"{p}"' for p in PYTHONPATH)
    (STAGE / "pyproject.toml").write_text(f"{section}\n[tool.pytest.ini_options]\npythonpath = [{pythonpath}]\n")
    # The staged names must be the ones [tool.mutmut] mutates.
    only = tomllib.loads(section)["tool"]["mutmut"]["only_mutate"]
    missing = [path for path in only if not (STAGE / path).is_file()]
    if missing:
        sys.exit(f"[tool.mutmut] only_mutate names files the stage lacks: {missing}")


def mutmut(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(VENV_BIN / "mutmut"), *args], cwd=STAGE, env=env, text=True, capture_output=capture, check=False
    )


def selection() -> list[str]:
    """mutmut's names for the mutants of FUNCTIONS (x_<function>__mutmut_<n>)."""
    return [f"{module}.x_{function}__mutmut_*" for module, functions in FUNCTIONS.items() for function in functions]


# What `mutmut results` calls a mutant no test noticed.
SURVIVED = ("survived", "no tests", "timeout", "suspicious")


def survivors() -> list[str]:
    """The names of the mutants that survived, or that no test reached."""
    out = mutmut("results", capture=True).stdout
    found = re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", out, re.M)
    return sorted((name for name, status in found if status.strip() in SURVIVED), key=_natural)


def _natural(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number)


def diff(name: str) -> tuple[list[str], list[str]]:
    """The lines a mutant removes and adds."""
    out = mutmut("show", name, capture=True).stdout.splitlines()
    removed = [line[1:] for line in out if line.startswith("-") and not line.startswith("--- ")]
    added = [line[1:] for line in out if line.startswith("+") and not line.startswith("+++ ")]
    return removed, added


def in_a_raise(name: str, removed: list[str]) -> bool:
    """True when every line the mutant changes lies in a `raise` statement: it changes the words
    of a refusal, and the refusal itself stands."""
    module, _, rest = name.rpartition(".x_")
    function = rest.rpartition("__mutmut_")[0]
    path = STAGE / "src" / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if node is None or not removed:
        return False
    lines = path.read_text().splitlines()
    statements = [s for s in ast.walk(node) if isinstance(s, ast.stmt) and s is not node]
    for text in removed:
        numbers = [i + 1 for i in range(node.lineno - 1, node.end_lineno) if lines[i] == text]
        for number in numbers or [0]:
            around = [s for s in statements if s.lineno <= number <= s.end_lineno]
            innermost = min(around, key=lambda s: s.end_lineno - s.lineno, default=None)
            if not isinstance(innermost, ast.Raise):
                return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", metavar="NAME", help="the diff of one mutant of the last run")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at a time (default 2)")
    args = parser.parse_args()
    if args.show:
        return mutmut("show", args.show).returncode
    stage()
    run = mutmut("run", "--max-children", str(args.jobs), *selection())
    if run.returncode != 0:
        print(f"mutmut run failed (exit {run.returncode})")
        return run.returncode
    wording, others = [], []
    for name in survivors():
        removed, added = diff(name)
        (wording if in_a_raise(name, removed) else others).append((name, removed, added))
    print(f"\n{len(wording)} surviving mutants change only the words of a refusal (the refusal stands):")
    for name, _, _ in wording:
        print(f"  {name}")
    print(f"\n{len(others)} other surviving mutants; tests/mutants.md says why each is harmless:")
    for name, removed, added in others:
        print(f"\n  {name}")
        print("\n".join([*(f"  - {line.strip()}" for line in removed), *(f"  + {line.strip()}" for line in added)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
