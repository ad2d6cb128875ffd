"""The rolling deploy's decisions (plugins/filter/rollout.py) and its host check (library/deploy_check.py)."""

import deploy_check
import pytest
import rollout
from ansible.errors import AnsibleFilterError
from ansible_module import assert_documented

SERVICES = {
    "frontend": {"port": 8080, "mesh_port": 10443, "egress_port": 10000, "calls": ["greeter"], "version": "2.0.0-1"},
    "greeter": {"port": 8081, "mesh_port": 10444, "egress_port": 10001, "package": "greeter-app", "version": "1.1.0-1"},
    "lonely": {"port": 8082, "mesh_port": 10445, "egress_port": 10002},
}
HOSTVARS = {
    "app1": {"ansible_host": "10.0.0.21", "services": ["frontend"]},
    "app2": {"ansible_host": "10.0.0.22", "services": ["greeter"]},
    "app3": {"ansible_host": "10.0.0.23", "services": ["greeter", "lonely"]},
    "app4": {"ansible_host": "10.0.0.24", "services": ["greeter"]},
    "mon1": {"ansible_host": "10.0.0.14"},
}
NAMES = list(HOSTVARS)


def plan(service="greeter", version="1.2.0-1", serial=1, addresses=None):
    return rollout.deploy_plan(SERVICES, HOSTVARS, NAMES, service, version, serial, addresses)


def test_the_plan_names_the_hosts_in_batches_and_the_callers_to_watch():
    result = plan(serial="2")
    assert result["hosts"] == ["app2", "app3", "app4"] and result["callers"] == ["app1"]
    assert result["batches"] == [["app2", "app3"], ["app4"]] and result["serial"] == 2
    assert result["cluster"] == "upstream_greeter"
    assert result["endpoints"] == {"app2": "10.0.0.22:10444", "app3": "10.0.0.23:10444", "app4": "10.0.0.24:10444"}
    assert result["package"] == "greeter-app" and result["pinned"] == "1.1.0-1" and result["version"] == "1.2.0-1"


def test_the_plan_takes_the_address_envoy_host_addresses_names():
    assert plan(addresses={"app2": "192.0.2.2"})["endpoints"]["app2"] == "192.0.2.2:10444"


def test_a_service_without_callers_may_go_in_one_batch_and_is_its_own_package():
    result = plan("lonely", serial=1)
    assert result["hosts"] == ["app3"] and result["callers"] == [] and result["package"] == "lonely"
    assert result["pinned"] == ""


@pytest.mark.parametrize(
    "service, version, serial",
    [
        ("", "1.2.0-1", 1),
        (None, "1.2.0-1", 1),
        ("greeter", "", 1),
        ("greeter", "1.2.0", 1),
        ("greeter", "v1.2.0-1", 1),
        ("greeter", "1.2.0-1", 0),
        ("greeter", "1.2.0-1", "two"),
    ],
)
def test_inputs_that_are_not_a_deploy_are_refused_with_how_to_run_it(service, version, serial):
    with pytest.raises(AnsibleFilterError, match=r"Run it as `ansible-playbook playbooks/deploy.yml -e service=NAME"):
        plan(service, version, serial)


def test_an_unknown_service_is_named():
    with pytest.raises(AnsibleFilterError, match="deploy: nope is not a service of sevenleague_services"):
        plan("nope")


def test_a_service_no_host_runs_is_refused():
    services = {**SERVICES, "idle": {"port": 8083, "mesh_port": 10446, "egress_port": 10003}}
    with pytest.raises(AnsibleFilterError, match="No host runs idle: add it to the `services`"):
        rollout.deploy_plan(services, HOSTVARS, NAMES, "idle", "1.0.0-1")


def test_a_batch_that_would_drain_every_host_the_callers_reach_is_refused():
    with pytest.raises(AnsibleFilterError, match=r"greeter runs on 3 host\(s\) and deploy_serial is 3: .*\(app1\)"):
        plan(serial=3)


def test_a_failure_leaves_the_later_batches_alone():
    result = plan(serial=2)
    assert rollout.later_hosts(result, "app2") == ["app4"] == rollout.later_hosts(result, "app3")
    assert rollout.later_hosts(result, "app4") == []
    assert rollout.later_hosts(plan(), "app2") == ["app3", "app4"]


def test_hosts_that_did_not_pass_the_checks_are_named_once():
    hostvars = {**HOSTVARS, "app1": {"deploy_checked": True}, "app3": {"deploy_checked": True}}
    assert rollout.unchecked(plan(), hostvars) == ["app2", "app4"]
    everyone = {name: {"deploy_checked": True} for name in NAMES}
    assert rollout.unchecked(plan(), everyone) == []


def test_a_caller_that_is_down_is_named_and_stops_the_deploy_only_when_strict():
    targets_up = {**HOSTVARS, **{name: {"deploy_checked": True} for name in ("app2", "app3", "app4")}}
    assert rollout.unchecked(plan(), targets_up) == []
    assert rollout.unchecked(plan(), targets_up, strict=True) == ["app1"]
    assert rollout.callers_down(plan(), targets_up) == ["app1"]
    assert "Callers down, not asked: app1." in rollout.report(plan(), targets_up)
    everyone = {name: {"deploy_checked": True} for name in NAMES}
    assert rollout.callers_down(plan(), everyone) == [] and "Callers down" not in rollout.report(plan(), everyone)


def views(**flags_by_caller):
    """A looped uri result: each caller's /clusters with app2's endpoint in the given health state."""
    return {
        "results": [
            {"item": name, "content": f"upstream_greeter::10.0.0.22:10444::health_flags::{flags}\n"}
            for name, flags in flags_by_caller.items()
        ]
    }


def callers(*names):
    return {**plan(), "callers": list(names)}


@pytest.mark.parametrize(
    "flags, ok, needed",
    [
        # One liar among three is outvoted either way.
        ({"c1": "healthy", "c2": "healthy", "c3": "/failed_active_hc"}, True, 2),
        ({"c1": "/failed_active_hc", "c2": "/failed_active_hc", "c3": "healthy"}, False, 2),
        # Two: both must agree.
        ({"c1": "healthy", "c2": "/failed_active_hc"}, False, 2),
        # One caller asked: its word.
        ({"c1": "healthy"}, True, 1),
        ({"c1": "/failed_active_hc"}, False, 1),
        # Nobody to ask (every caller down): /healthz alone judged the host.
        ({}, True, 0),
    ],
)
def test_a_majority_of_the_callers_asked_decides(flags, ok, needed):
    verdict = rollout.quorum(views(**flags), callers("c1", "c2", "c3"), "10.0.0.22:10444", "healthy")
    assert (verdict["ok"], verdict["needed"]) == (ok, needed), verdict
    assert sorted(verdict["agree"] + verdict["dissent"]) == sorted(flags)


def test_strict_wants_every_caller_of_the_plan():
    two_of_three = views(c1="healthy", c2="healthy")
    verdict = rollout.quorum(two_of_three, callers("c1", "c2", "c3"), "10.0.0.22:10444", "healthy", strict=True)
    assert not verdict["ok"] and verdict["needed"] == 3
    assert (
        "2 of the 2 callers asked see 10.0.0.22:10444 healthy (c1, c2); 3 needed (every caller)" in verdict["message"]
    )


def test_the_quorum_of_drained_names_who_still_sends_requests():
    content = "upstream_greeter::10.0.0.22:10444::health_flags::/failed_active_hc\n"
    busy = content + "upstream_greeter::10.0.0.22:10444::rq_active::3\n"
    result = {"results": [{"item": "c1", "content": content}, {"item": "c2", "content": busy}]}
    verdict = rollout.quorum(result, callers("c1", "c2"), "10.0.0.22:10444", "drained")
    assert not verdict["ok"] and verdict["dissent"] == ["c2"] and "not: c2" in verdict["message"]
    with pytest.raises(AnsibleFilterError, match="drained or healthy"):
        rollout.quorum(result, callers("c1"), "10.0.0.22:10444", "up")


@pytest.mark.parametrize(
    "result, reason",
    [
        ({"msg": "Status code was 503"}, "Wait for it: Status code was 503"),
        (
            {"msg": "One or more items failed", "results": [{"failed": False}, {"failed": True, "msg": "no\n  way"}]},
            "Wait for it: no way",
        ),
        ({"results": [{"failed": True}]}, "Wait for it: failed"),
    ],
)
def test_the_failure_reason_says_why(result, reason):
    assert rollout.failure_reason({"name": "Wait for it"}, result) == reason


def test_a_failure_without_a_task_name_still_reads():
    assert rollout.failure_reason({}, {"msg": "boom"}) == "a task: boom"


CLUSTERS = """\
upstream_greeter::observability_name::upstream_greeter
upstream_greeter::10.0.0.22:10444::rq_active::2
upstream_greeter::10.0.0.22:10444::health_flags::/failed_active_hc
upstream_greeter::10.0.0.23:10444::rq_active::0
upstream_greeter::10.0.0.23:10444::health_flags::healthy
upstream_greeter::10.0.0.24:10444::rq_active::0
upstream_greeter::10.0.0.24:10444::health_flags::/failed_active_hc/active_hc_timeout
upstream_other::10.0.0.22:10444::health_flags::healthy
"""


@pytest.mark.parametrize(
    "endpoint, drained, healthy, flags, active",
    [
        ("10.0.0.22:10444", False, False, "/failed_active_hc", 2),
        ("10.0.0.23:10444", False, True, "healthy", 0),
        ("10.0.0.24:10444", True, False, "/failed_active_hc/active_hc_timeout", 0),
        ("10.0.0.99:10444", False, False, "", 0),
    ],
)
def test_a_callers_view_of_an_endpoint(endpoint, drained, healthy, flags, active):
    view = rollout.envoy_endpoint(CLUSTERS, "upstream_greeter", endpoint)
    assert view == {"health_flags": flags, "rq_active": active, "drained": drained, "healthy": healthy}


def test_the_report_says_where_each_host_stands_and_what_the_inventory_pins():
    hostvars = {
        "app1": {"deploy_checked": True},
        "app2": {"deploy_previous": "1.1.0-1"},
        "app3": {"deploy_previous": "1.2.0-1"},
        "app4": {},
    }
    assert rollout.report(plan(), hostvars, check_mode=True) == (
        "Check mode, nothing changed: greeter 1.2.0-1 would go to app2, app4. The inventory pins 1.1.0-1: set "
        "sevenleague_services.greeter.version to 1.2.0-1, or the next site.yml installs that again."
    )
    assert rollout.report(plan(version="1.1.0-1"), hostvars) == "greeter 1.1.0-1 runs on app2, app3, app4."
    assert "pins the newest:" in rollout.report(plan("lonely"), hostvars)
    everyone = {name: {"deploy_previous": "1.2.0-1", "deploy_checked": True} for name in NAMES}
    assert "would go to no host." in rollout.report(plan(), everyone, check_mode=True)


def test_madison_lines_give_the_versions():
    output = """\
   greeter | 1.1.0+rollout1-1 | https://repo1.example/debian sevenleague/main amd64 Packages
   greeter |    1.1.0-1 | https://repo1.example/debian sevenleague/main amd64 Packages
   greeter |    1.1.0-1 | https://repo1.example/debian sevenleague/main all Packages
"""
    assert deploy_check.madison_versions(output) == ["1.1.0+rollout1-1", "1.1.0-1"]
    assert deploy_check.madison_versions("") == []


def test_the_host_check_names_what_to_fix_first():
    assert deploy_check.problem("greeter", "1.2.0-1", ["1.2.0-1"], "1.1.0-1") is None
    missing = deploy_check.problem("greeter", "9.9.9-1", ["1.2.0-1"], "")
    assert missing.startswith("greeter 9.9.9-1 is not in the repository this host uses") and "publish.yml" in missing
    absent = deploy_check.problem("greeter", "1.2.0-1", ["1.2.0-1"], "")
    assert absent.startswith("greeter is not installed on this host: converge it with site.yml")


def test_the_host_check_is_documented():
    assert_documented(deploy_check)
