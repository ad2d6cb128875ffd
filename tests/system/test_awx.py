"""site.yml as AWX / Ansible Automation Platform runs it: through ansible-runner,
from a private data dir with a fresh copy of the project (conftest.site_runs)."""

from conftest import LAB_HOSTS

FAILED_EVENTS = ("runner_on_failed", "runner_on_unreachable", "runner_item_on_failed")


def test_site_runs_through_ansible_runner_with_no_failed_event(converged):
    run = converged[1]
    assert run.rc == 0, run.output[-3000:]
    kinds = {event["event"] for event in run.events}
    # The events AWX stores for a job: a start, every task's result, the stats.
    assert {"playbook_on_start", "runner_on_ok", "playbook_on_stats"} <= kinds, kinds
    failed = [
        (event["event"], event["event_data"].get("host"), event["event_data"].get("task"))
        for event in run.events
        if event["event"] in FAILED_EVENTS and not event["event_data"].get("ignore_errors")
    ]
    assert failed == []
    stats = next(event["event_data"] for event in run.events if event["event"] == "playbook_on_stats")
    assert set(LAB_HOSTS) <= set(stats["ok"])
    assert not stats["failures"] and not stats["dark"]


def test_the_runner_job_kept_the_controller_state_outside_the_project(converged):
    # SEVENLEAGUE_STATE_DIR pointed the CA and OpenBao's keys at the lab
    # inventory: the copy AWX would throw away holds none of them.
    project = converged[1].private_data_dir / "project"
    assert (project / "site.yml").is_file()
    for state in (".pki", ".pki-next", ".openbao"):
        assert not (project / "inventories" / "lab" / state).exists(), state
