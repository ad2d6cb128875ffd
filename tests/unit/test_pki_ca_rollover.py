"""pki_ca_rollover: the built-in CA's rollover phase read from its folders, and the folders' moves."""

import datetime
import json
import os
import stat

import pki_ca_rollover as mod
import pytest
from ansible_module import assert_documented, run_module

NOW = datetime.datetime(2026, 12, 7, 14, 30, 5, tzinfo=datetime.UTC)


def ca(folder, root="root"):
    folder.mkdir(parents=True)
    (folder / "root.crt").write_text(root)
    (folder / "intermediate.crt").write_text(f"intermediate of {root}")


def params(ca_dir, step="plan", **overrides):
    return {
        "ca_dir": str(ca_dir),
        "step": step,
        "until": "retire",
        "again": False,
        "limit": "",
        "backend": "builtin",
        **overrides,
    }


@pytest.fixture
def active(tmp_path):
    ca(tmp_path / ".pki", "old")
    return tmp_path / ".pki"


@pytest.mark.parametrize(
    "until, steps", [("retire", ["trust", "switch", "retire"]), ("switch", ["trust", "switch"]), ("trust", ["trust"])]
)
def test_a_new_rollover_takes_every_step_up_to_until_and_needs_the_next_ca(active, until, steps):
    result = mod.run(params(active, until=until), check_mode=False)
    assert result["steps"] == steps and result["create_next"] and not result["done"] and not result["changed"]
    assert result["next_dir"] == f"{active}-next" and result["previous_dir"] == f"{active}-previous"


def test_after_the_switch_the_trust_step_is_behind(active, tmp_path):
    ca(tmp_path / ".pki-previous", "older")
    result = mod.run(params(active), check_mode=False)
    assert result["steps"] == ["switch", "retire"] and not result["create_next"]


def test_a_rollover_stopped_at_trust_and_already_switched_has_no_step_left(active, tmp_path):
    ca(tmp_path / ".pki-previous", "older")
    assert mod.run(params(active, until="trust"), check_mode=False)["steps"] == []


def test_a_finished_rollover_leaves_nothing_to_do_unless_asked_again(active):
    (active / "rollover.json").write_text("{}")
    done = mod.run(params(active), check_mode=False)
    assert done["done"] and done["steps"] == [] and not done["create_next"]
    again = mod.run(params(active, again=True), check_mode=False)
    assert not again["done"] and again["steps"] == ["trust", "switch", "retire"] and again["create_next"]


def test_a_record_beside_a_rollover_under_way_does_not_stop_it(active, tmp_path):
    (active / "rollover.json").write_text("{}")
    ca(tmp_path / ".pki-next", "new")
    assert mod.run(params(active), check_mode=False)["steps"] == ["trust", "switch", "retire"]


def test_a_switch_interrupted_between_its_moves_is_finished(tmp_path):
    ca(tmp_path / ".pki-previous", "old")
    ca(tmp_path / ".pki-next", "new")
    planned = mod.run(params(tmp_path / ".pki"), check_mode=True)
    assert planned["changed"] and not (tmp_path / ".pki").exists()
    result = mod.run(params(tmp_path / ".pki"), check_mode=False)
    assert result["changed"] and result["steps"] == ["switch", "retire"]
    assert (tmp_path / ".pki" / "root.crt").read_text() == "new" and not (tmp_path / ".pki-next").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"until": "soon"}, "rotate_ca_until must be trust, switch or retire (the default), not soon."),
        ({"limit": "app1.example"}, "cannot run with --limit app1.example: hosts left out would stop trusting"),
        ({"backend": "openbao"}, "this fleet's pki_backend is openbao. OpenBao's intermediate rolls over with"),
    ],
)
def test_a_rollover_that_cannot_be_done_whole_is_refused_before_anything_moves(tmp_path, overrides, message):
    ca(tmp_path / ".pki-previous", "old")
    ca(tmp_path / ".pki-next", "new")
    with pytest.raises(mod.Refusal, match=message.replace("(", r"\(").replace(")", r"\)")):
        mod.run(params(tmp_path / ".pki", **overrides), check_mode=False)
    assert (tmp_path / ".pki-next").exists() and not (tmp_path / ".pki").exists()


def test_the_switch_moves_the_active_ca_aside_and_the_next_one_in_once(active, tmp_path):
    ca(tmp_path / ".pki-next", "new")
    assert mod.run(params(active, "switch"), check_mode=True)["changed"]
    assert (active / "root.crt").read_text() == "old"
    assert mod.run(params(active, "switch"), check_mode=False)["changed"]
    assert (active / "root.crt").read_text() == "new"
    assert (tmp_path / ".pki-previous" / "root.crt").read_text() == "old"
    assert not (tmp_path / ".pki-next").exists()
    assert not mod.run(params(active, "switch"), check_mode=False)["changed"]


def test_a_switch_without_a_next_ca_is_refused(active):
    with pytest.raises(mod.Refusal, match="holds no CA to switch to"):
        mod.run(params(active, "switch"), check_mode=False)
    assert (active / "root.crt").read_text() == "old"


def test_the_archive_records_the_rollover_then_moves_the_old_ca(tmp_path):
    ca(tmp_path / ".pki", "new")
    ca(tmp_path / ".pki-previous", "old")
    planned = mod.run(params(tmp_path / ".pki", "archive"), check_mode=True, now=NOW)
    archive = f"{tmp_path}/.pki-retired/20261207T143005Z"
    assert planned["changed"] and planned["archive"] == archive
    assert not (tmp_path / ".pki" / "rollover.json").exists() and (tmp_path / ".pki-previous").exists()
    result = mod.run(params(tmp_path / ".pki", "archive"), check_mode=False, now=NOW)
    assert result["changed"] and result["archive"] == archive
    record = tmp_path / ".pki" / "rollover.json"
    assert json.loads(record.read_text()) == {"finished": "2026-12-07T14:30:05Z", "previous_ca": archive}
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / ".pki-retired").st_mode) == 0o700
    assert (tmp_path / ".pki-retired" / "20261207T143005Z" / "root.crt").read_text() == "old"
    assert not (tmp_path / ".pki-previous").exists()
    # Then the rollover is finished: the next plan has nothing to do.
    assert not mod.run(params(tmp_path / ".pki", "archive"), check_mode=False, now=NOW)["changed"]
    assert mod.run(params(tmp_path / ".pki"), check_mode=False)["done"]


def test_documentation_matches_the_argument_spec():
    assert_documented(mod)


def test_module_runs_through_ansible(tmp_path):
    ca(tmp_path / ".pki", "old")
    result, _ = run_module(
        "pki_ca_rollover", {"step": "plan", "ca_dir": str(tmp_path / ".pki"), "until": "switch"}, tmp_path
    )
    assert result["steps"] == ["trust", "switch"] and result["create_next"], result
    refused, _ = run_module(
        "pki_ca_rollover", {"step": "plan", "ca_dir": str(tmp_path / ".pki"), "limit": "a"}, tmp_path
    )
    assert refused["failed"] and "cannot run with --limit a:" in refused["msg"]
