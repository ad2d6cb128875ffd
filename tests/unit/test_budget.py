"""Every test level and Molecule scenario states its cost in tests/budget.yml."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_level_and_scenario_has_a_budget():
    budget = yaml.safe_load((ROOT / "tests" / "budget.yml").read_text())["seconds"]
    scenarios = {
        f"molecule {path.parents[2].name}/{path.parent.name}" for path in ROOT.glob("roles/*/molecule/*/molecule.yml")
    }
    wanted = {"lint", "unit", "system", "total"} | scenarios
    assert wanted <= set(budget), f"no budget for {sorted(wanted - set(budget))}"
    # A budget for something that no longer exists is a stale line.
    assert set(budget) <= wanted, f"budget for unknown steps {sorted(set(budget) - wanted)}"
    assert all(isinstance(seconds, int) and seconds > 0 for seconds in budget.values())
