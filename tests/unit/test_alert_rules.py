"""The alert rules: valid for promtool, unit-tested both ways, each with its runbook.

Rule files: roles/prometheus/files/rules/*.rules.yml and the SLO template
roles/prometheus/templates/slo.rules.yml.j2, rendered here as the prometheus role
renders it. Their promtool tests: tests/rules/*.test.yml, which name their rule file
by its installed name; each runs from a folder that holds the rule files as the role
installs them (RUNBOOK_BASE_URL replaced).

promtool comes from the controller's Debian release, fetched once with `apt-get download`
into .cache/promtool/ and unpacked without root (on Debian 12, 2.42 from the prometheus
package: the oldest Prometheus the role supports). SEVENLEAGUE_PROMTOOL=<path> runs
another promtool instead, e.g. Debian 13's 2.53.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "roles" / "prometheus" / "files" / "rules"
SLO_TEMPLATE = ROOT / "roles" / "prometheus" / "templates" / "slo.rules.yml.j2"
TESTS = ROOT / "tests" / "rules"
RUNBOOKS = ROOT / "docs" / "runbooks"
CACHE = ROOT / ".cache" / "promtool"

TEST_FILES = sorted(TESTS.glob("*.test.yml"))
# What the role writes in place of the literal (prometheus_runbook_base_url).
BASE_URL = "https://git.example.test/sevenleague/-/blob/main/docs/runbooks"
# tests/rules/slo*.test.yml expect the template rendered with this.
SLOS = [{"service": "greeter", "objective": 0.999}]
SEVERITIES = {"page", "ticket", "info"}
# Runbooks an operator's decision starts, not an alert.
OPERATOR_RUNBOOKS = {"host-compromised"}
RUNBOOK_SECTIONS = ("what it means", "how to confirm", "what to do")


def render_slo_rules(slos: list[dict]) -> str:
    """Render the template with Ansible's template settings (trim_blocks on)."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["comment"] = lambda text: "#\n# " + text + "\n#"
    return env.from_string(SLO_TEMPLATE.read_text()).render(prometheus_slos=slos, ansible_managed="Ansible managed")


def install(text: str) -> str:
    """What the role does to a rule file's text before installing it."""
    return text.replace("RUNBOOK_BASE_URL", BASE_URL)


def rule_sources() -> dict[str, str]:
    """Every rule file by its installed name, before the base URL is replaced."""
    sources = {path.name: path.read_text() for path in sorted(RULES.glob("*.rules.yml"))}
    sources["slo.rules.yml"] = render_slo_rules(SLOS)
    return sources


def alerts() -> dict[str, dict]:
    found = {}
    for name, text in rule_sources().items():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found.setdefault(rule["alert"], {"file": name, **rule})
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    if os.environ.get("SEVENLEAGUE_PROMTOOL"):
        return os.environ["SEVENLEAGUE_PROMTOOL"]
    binary = CACHE / "promtool"
    if binary.exists():
        return str(binary)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        # Debian 13 ships promtool in a package of its own; Debian 12 inside prometheus.
        for package in ("promtool", "prometheus"):
            fetched = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
            if fetched.returncode == 0:
                break
        else:
            pytest.fail(
                f"`apt-get download prometheus` failed ({fetched.stderr.strip()}); "
                "run `apt-get update`, or set SEVENLEAGUE_PROMTOOL to a promtool binary"
            )
        deb = next(Path(work).glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(work) / "root")], check=True)
        # Only the binary is kept; a concurrent run at worst replaces it with the same file.
        os.replace(Path(work) / "root" / "usr" / "bin" / "promtool", binary)
    return str(binary)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """A folder of the rule files as installed, and the tests beside them."""
    folder = tmp_path_factory.mktemp("rules")
    for name, text in rule_sources().items():
        (folder / name).write_text(install(text))
    for path in TEST_FILES:
        (folder / path.name).write_text(install(path.read_text()))
    return folder


@pytest.fixture(scope="session")
def promtool_runs(promtool, installed):
    """Every test file's `promtool test rules`, started at once: they take seconds each."""
    runs = {
        path.name: subprocess.Popen(
            [promtool, "test", "rules", path.name],
            cwd=installed,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for path in TEST_FILES
    }
    yield runs
    for run in runs.values():  # those of deselected tests
        if run.poll() is None:
            run.kill()
        run.communicate()


def test_rule_files_pass_promtool_check(promtool, installed, tmp_path):
    # No SLO must still be a valid file, and two SLOs must not trip the duplicate-rule lint.
    (tmp_path / "slo-none.rules.yml").write_text(install(render_slo_rules([])))
    (tmp_path / "slo-two.rules.yml").write_text(
        install(render_slo_rules([*SLOS, {"service": "store", "objective": 0.99}]))
    )
    files = [*sorted(installed.glob("*.rules.yml")), *sorted(tmp_path.glob("*.rules.yml"))]
    checked = subprocess.run([promtool, "check", "rules", *map(str, files)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(promtool_runs, test_file):
    run = promtool_runs[test_file.name]
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output


def test_every_rule_file_has_its_tests():
    tested = {name for path in TEST_FILES for name in yaml.safe_load(path.read_text())["rule_files"]}
    assert tested == set(rule_sources())


def test_every_alert_is_tested_firing_and_not_firing():
    fires, stays_quiet = set(), set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else stays_quiet).add(check["alertname"])
    names = set(alerts())
    assert names - fires == set(), "alerts no test case fires"
    assert names - stays_quiet == set(), "alerts no test case expects quiet"
    assert (fires | stays_quiet) - names == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_says_how_urgent_it_is_and_where_its_runbook_is(name):
    rule = alerts()[name]
    assert rule.get("for"), "a `for` keeps one bad scrape from alerting"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations.get("summary") and annotations.get("description")
    assert annotations["runbook_url"] == f"RUNBOOK_BASE_URL/{name}.md"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_has_a_runbook_that_says_what_to_do(name):
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.exists()
    headings = [line.lstrip("#").strip().lower() for line in runbook.read_text().splitlines() if line.startswith("## ")]
    for section in RUNBOOK_SECTIONS:
        assert any(heading.startswith(section) for heading in headings), f"no '## {section}' section"


def test_the_runbook_index_lists_every_runbook_and_nothing_else():
    index = (RUNBOOKS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([A-Za-z0-9]+)\.md\)", index))
    assert linked == set(alerts())
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    # Besides the alerts' pages, the operator's own (no alert starts them), linked from the index too.
    assert pages == set(alerts()) | OPERATOR_RUNBOOKS
    assert all(f"]({name}.md)" in index for name in OPERATOR_RUNBOOKS)
