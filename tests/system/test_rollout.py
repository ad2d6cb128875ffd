"""Growing the fleet, rolling a service out, and shrinking it again, on the lab.

A third app host running greeter joins the lab inventory (a file of its own next to hosts.yml, as
Ansible reads the whole directory): the lab tool starts it from an image without Python, the pyinfra
bootstrap makes it manageable, site.yml converges the fleet with it, and frontend's Envoy on app1
sends it requests without a restart. Then greeter, now on app2 and app3, is rolled out with
playbooks/deploy.yml while a client on app1 sends frontend (which calls greeter through the mesh)
over 200 requests a second: a good version, a broken one (its health fails, so the first host rolls
back and the second is left alone), and a rollback. Last, app3 leaves the inventory and site.yml
takes it out of every peer; if that test did not get there, the `grown` fixture does the same, so
the fleet is left as site.yml converges it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra
from conftest import (
    CURRENT,
    LAB_HOSTS,
    REPORTS,
    ROOT,
    SSH_CONFIG,
    ansible_playbook,
    lab,
    renewal_roles,
    steady_load,
    stopped,
    unreachable,
)
from cryptography import x509

APP1, APP2, APP3 = "app1.sevenleague.test", "app2.sevenleague.test", "app3.sevenleague.test"
MONITOR = "mon1.sevenleague.test"
ADDED = ROOT / "inventories" / "lab" / "hosts_app3.test.yml"
ADDED_HOST = """\
---
# Added by tests/system/test_rollout.py for its run.
all:
  children:
    apps:
      hosts:
        app3.sevenleague.test:
          ansible_host: 10.213.7.23
          lab_image: bare
          services: [greeter]
"""
URL = "http://127.0.0.1:8080/?name=rollout"
RATE = 220
PINNED = "1.1.0-2"
GOOD, BROKEN = "1.1.0+rollout1-2", "1.1.0+rollout2-2"
# Fixed timestamps, so a rerun on the same lab builds the same bytes and publishing them changes nothing.
EPOCH = 1_780_000_000


def greeter_release(workdir: Path, version: str, broken: bool = False) -> Path:
    """greeter as built for the lab, at another version; `broken` turns the app's fault switch on by
    default, so its /healthz answers 503, the way a bad release fails."""
    [deb] = (ROOT / "build" / "debs").glob(f"greeter_{PINNED}_all.deb")
    tree = workdir / f"tree-{version}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    if broken:
        svc = tree / "usr" / "lib" / "greeter" / "svc.py"
        text = svc.read_text()
        assert '"fault_healthz": False' in text
        svc.write_text(text.replace('"fault_healthz": False', '"fault_healthz": True'))
        md5 = subprocess.run(
            ["md5sum", "usr/lib/greeter/svc.py"], cwd=tree, check=True, capture_output=True, text=True
        ).stdout
        sums = tree / "DEBIAN" / "md5sums"
        sums.write_text(re.sub(r"^\S+  usr/lib/greeter/svc\.py\n", md5, sums.read_text(), flags=re.M))
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    out = workdir / f"greeter_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
        env=dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH)),
    )
    return out


def deploy(version: str, *extra: str, log: str):
    return ansible_playbook(
        "playbooks/deploy.yml", "-e", "service=greeter", "-e", f"version={version}", *extra, log=log
    )


def greeters(app1, count: int = 40) -> dict[str, int]:
    """Which hosts answered `count` calls to frontend on app1, through its Envoy."""
    seen: dict[str, int] = {}
    for _ in range(count):
        answer = json.loads(app1.check_output(f"curl -sf --max-time 5 '{URL}'"))
        seen[answer["greeter"]["host"]] = seen.get(answer["greeter"]["host"], 0) + 1
    return seen


def started_at(host, unit: str) -> str:
    return host.check_output(f"systemctl show {unit} -p ActiveEnterTimestampMonotonic --value")


@pytest.fixture(scope="module")
def grown(hosts):
    """The lab with app3: the container started by the lab tool, then site.yml with both inventories.
    Afterwards app3 is gone, and unless the last test took it out of every peer (and put greeter
    back at its pinned version), site.yml without it does."""
    app1 = hosts[APP1]
    envoy_pid = app1.check_output("systemctl show envoy -p MainPID --value")
    state = {"taken_out": None}
    try:
        ADDED.write_text(ADDED_HOST)
        subprocess.run([sys.executable, str(ROOT / "lab" / "lab.py"), "up"], check=True, capture_output=True)
        bare = (
            lab.podman("exec", lab.container_name(APP3), "sh", "-c", "command -v python3", check=False).returncode != 0
        )
        bootstrap = subprocess.run(
            [sys.executable, str(ROOT / "bootstrap" / "bootstrap.py"), APP3], cwd=ROOT, capture_output=True, text=True
        )
        (REPORTS / "bootstrap-app3.log").write_text(bootstrap.stdout + bootstrap.stderr)
        run = ansible_playbook("site.yml", log="site-grown.log") if bootstrap.returncode == 0 else None
        app3 = testinfra.get_host(f"ssh://{APP3}", ssh_config=str(SSH_CONFIG))
        state.update({"run": run, "bare": bare, "bootstrap": bootstrap, "envoy_pid": envoy_pid, APP3: app3, **hosts})
        yield state
    finally:
        ADDED.unlink(missing_ok=True)
        taken_out = state["taken_out"]
        if taken_out is None or taken_out.rc != 0:
            shrunk = ansible_playbook("site.yml", log="site-without-app3.log")
            assert shrunk.rc == 0, shrunk.output[-3000:]
        subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-O", "exit", APP3], capture_output=True)
        lab.podman("rm", "-f", "-t", "5", lab.container_name(APP3), check=False)


def test_a_bare_host_is_bootstrapped_with_pyinfra(grown):
    assert grown["bare"], "app3 started with python3: the lab did not use the bare image"
    assert grown["bootstrap"].returncode == 0, grown["bootstrap"].stdout[-3000:] + grown["bootstrap"].stderr
    assert grown[APP3].run("python3 -c 'import apt'").rc == 0


def test_an_added_host_converges_and_frontends_envoy_sends_it_requests_without_a_restart(grown):
    assert grown["run"] is not None, "the bootstrap failed, so site.yml did not run"
    assert grown["run"].rc == 0, grown["run"].output[-3000:]
    assert grown["run"].recap[APP3]["failed"] == 0
    app1 = grown[APP1]
    # The same Envoy process: the new upstream came through its watched files.
    assert app1.check_output("systemctl show envoy -p MainPID --value") == grown["envoy_pid"]
    # Envoy sends a new endpoint requests once its first health check passes (every 5 s).
    deadline, seen = time.monotonic() + 30, {}
    while seen.get(APP3, 0) == 0 and time.monotonic() < deadline:
        seen = greeters(app1, 10)
    assert seen.get(APP3, 0) > 0 and seen.get(APP2, 0) > 0, seen


def test_prometheus_scrapes_an_added_host_and_its_logs_reach_the_aggregator(grown):
    app3, mon = grown[APP3], grown[MONITOR]
    tag = f"sl-grown-{os.getpid()}"
    app3.check_output(f"logger -t {tag} 'n=1 from the added host'")
    aggregator = grown["logs1.sevenleague.test"]
    deadline, line, up = time.monotonic() + 90, "", {}
    while time.monotonic() < deadline:
        line = aggregator.run(f"cat /var/log/hosts/{APP3}/{tag}.log 2>/dev/null").stdout
        targets = json.loads(mon.check_output("curl -sf 'http://127.0.0.1:9090/api/v1/targets?state=active'"))
        up = {
            t["labels"]["job"]: t["health"]
            for t in targets["data"]["activeTargets"]
            if t["labels"].get("instance") == APP3
        }
        if "n=1 from the added host" in line and up.get("node") == "up" and up.get("envoy") == "up":
            break
        time.sleep(5)
    assert "n=1 from the added host" in line, "app3's line did not reach the aggregator under its name"
    assert up.get("node") == "up" and up.get("envoy") == "up", up


@pytest.fixture(scope="module")
def published(grown, tmp_path_factory):
    """The good and the broken release in the repository, next to the pinned one."""
    workdir = tmp_path_factory.mktemp("releases")
    debs = [str(greeter_release(workdir, GOOD)), str(greeter_release(workdir, BROKEN, broken=True))]
    run = ansible_playbook(
        "playbooks/publish.yml", "-e", json.dumps({"apt_repo_publish_debs": debs}), log="publish-rollout.log"
    )
    assert run.rc == 0, run.output[-3000:]
    return grown


def versions(state) -> dict[str, str]:
    return {name: state[name].package("greeter").version for name in (APP2, APP3)}


def test_an_unknown_version_stops_before_any_change(published):
    before = versions(published)
    run = deploy("9.9.9-1", log="deploy-unknown.log")
    assert run.rc != 0
    assert "greeter 9.9.9-1 is not in the repository" in run.output
    assert versions(published) == before


def test_check_mode_says_what_would_change_and_changes_nothing(published):
    run = deploy(GOOD, "--check", log="deploy-check.log")
    assert run.rc == 0, run.output[-3000:]
    for name in (APP2, APP3):
        assert f"greeter on {name}: {PINNED} -> {GOOD}" in run.output
    assert versions(published) == {APP2: PINNED, APP3: PINNED}
    assert "sevenleague.drain." not in published[APP2].check_output("cat /etc/envoy/xds/rtds.yaml")


def test_a_host_that_is_down_stops_the_rollout_before_it_starts(published):
    with stopped(APP3):
        run = deploy(GOOD, log="deploy-host-down.log")
    assert run.rc != 0
    assert f"{APP3} did not answer" in run.output and "nothing was deployed" in run.output
    assert versions(published) == {APP2: PINNED, APP3: PINNED}


def test_a_caller_that_is_down_is_named_and_stops_the_deploy_only_when_asked_to_be_strict(published):
    """app1, greeter's caller, out of the controller's reach: the deploy goes on without asking it
    (in check mode here, which stops before the first change), unless the operator wants every caller."""
    with unreachable(APP1):
        relaxed = deploy(GOOD, "--check", log="deploy-caller-down.log")
        strict = deploy(GOOD, "--check", "-e", "deploy_strict_callers=true", log="deploy-caller-down-strict.log")
    assert relaxed.rc == 0, relaxed.output[-3000:]
    assert f"Callers down, not asked whether a host is drained or healthy: {APP1}" in relaxed.output
    assert f"would go to {APP2}, {APP3}" in relaxed.output, relaxed.output[-3000:]
    assert strict.rc != 0
    assert f"{APP1} did not answer" in strict.output and "nothing was deployed" in strict.output
    assert versions(published) == {APP2: PINNED, APP3: PINNED}


def configured_rules(ruleset: str) -> str:
    """`nft list ruleset` without the elements that expire: the aggregator's per-sender rate meters
    (roles/rsyslog) remember a source for a minute after its last packet, which is state, not a
    rule any converge wrote."""
    return "\n".join(line for line in ruleset.splitlines() if " expires " not in line)


def rollout(state, version: str, log: str, *extra: str):
    with steady_load(state[APP1], URL, RATE) as load:
        time.sleep(2)
        run = deploy(version, *extra, log=log)
        time.sleep(2)
    (REPORTS / f"{log}.load.json").write_text(json.dumps(load, indent=1))
    return run, load


def assert_no_failed_request(load):
    assert load["failed"] == 0 and load["sent"] >= RATE * 20, load


def test_a_good_version_rolls_out_under_load_with_no_failed_request(published):
    run, load = rollout(published, GOOD, "deploy-good.log")
    assert run.rc == 0, run.output[-3000:]
    assert versions(published) == {APP2: GOOD, APP3: GOOD}
    assert_no_failed_request(load)
    for name in (APP2, APP3):
        fact = json.loads(published[name].check_output("cat /etc/ansible/facts.d/app.fact"))
        assert fact["greeter"]["version"] == GOOD, fact
    assert sorted(greeters(published[APP1], 20)) == [APP2, APP3]


def test_a_broken_version_rolls_back_on_the_first_host_and_leaves_the_second_alone(published):
    app3_started = started_at(published[APP3], "greeter")
    run, load = rollout(published, BROKEN, "deploy-broken.log", "-e", "deploy_health_timeout=10")
    assert run.rc != 0
    assert f"Deploying greeter {BROKEN} failed on {APP2}" in run.output, run.output[-3000:]
    assert f"{APP2} is back on {GOOD}" in run.output
    assert versions(published) == {APP2: GOOD, APP3: GOOD}
    assert started_at(published[APP3], "greeter") == app3_started
    assert_no_failed_request(load)
    assert sorted(greeters(published[APP1], 20)) == [APP2, APP3]


def test_a_rollback_is_a_deploy_of_the_previous_version(published):
    run, load = rollout(published, PINNED, "deploy-rollback.log")
    assert run.rc == 0, run.output[-3000:]
    assert versions(published) == {APP2: PINNED, APP3: PINNED}
    assert_no_failed_request(load)


def test_a_host_taken_out_of_the_inventory_is_taken_out_of_every_peer(published):
    """app3 leaves the inventory (its container keeps running, as a host that was not wiped): one
    site.yml later no peer routes to it, scrapes it, admits it through its firewall or keeps a
    renewal role for it."""
    ADDED.unlink()
    published["taken_out"] = run = ansible_playbook("site.yml", log="site-shrunk.log")
    assert run.rc == 0, run.output[-3000:]
    assert APP3 not in run.recap
    address = "10.213.7.23"
    for name in LAB_HOSTS:
        host = published[name]
        # Configuration written from the inventory: Envoy's xDS, firewall sets, scrape targets,
        # the aggregator's sender table.
        stale = host.run(f"grep -rlIF -e {address} -e {APP3} /etc")
        assert stale.stdout.strip() == "", (name, stale.stdout)
        assert address not in configured_rules(host.check_output("nft list ruleset")), name
    assert address not in published[APP1].check_output(
        "curl -sf --unix-socket /run/envoy/admin.sock http://localhost/clusters"
    )
    assert greeters(published[APP1], 20) == {APP2: 20}
    targets = json.loads(published[MONITOR].check_output("curl -sf http://127.0.0.1:9090/api/v1/targets"))
    assert not [t for t in targets["data"]["activeTargets"] if address in t["scrapeUrl"]]
    # Its identity is retired: OpenBao has no renewal or login role for it, its address is in no
    # allow-list (ca1's included, checked above), and its still valid certificate is revoked: in the
    # CRL every peer's Envoy checks. (test_retire.py shows a revoked host's own login refused.)
    assert f"renew-{APP3}" not in renewal_roles()
    app3_serial = int(
        published[APP3].check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -serial").split("=")[1], 16
    )
    crls = published[APP1].check_output("cat /etc/sevenleague/pki/crl.pem")
    revoked = {
        entry.serial_number
        for block in re.findall(r"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", crls, re.DOTALL)
        for entry in x509.load_pem_x509_crl(block.encode())
    }
    assert app3_serial in revoked, (hex(app3_serial), sorted(hex(n) for n in revoked))
