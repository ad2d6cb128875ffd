#!/usr/bin/python
"""The controller's side of the built-in CA's rollover: which phase, and the CA folders' moves."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_ca_rollover
short_description: Decide the phase of the built-in CA's rollover from its folders, and move them
description:
  - "The built-in CA rolls over in three phases (C(playbooks/rotate-ca.yml)): C(trust), every host
    trusts the next root beside the active one; C(switch), the next CA becomes the active one and
    every host gets a certificate from it; C(retire), the old root leaves every trust bundle and the
    old CA is archived. The folders beside O(ca_dir) record which phase is done, so a run resumes
    where an interrupted one stopped: C(<ca_dir>-next) (the next CA, phase 1),
    C(<ca_dir>-previous) (the CA the switch moved aside, phase 2),
    C(<ca_dir>-retired/<UTC time>) (archived, kept for audits), and C(<ca_dir>/rollover.json) once a
    rollover finished."
  - "O(step=plan) refuses a rollover that cannot be done whole (an unknown O(until), a O(limit), a
    O(backend) other than C(builtin)), finishes a switch an interrupted run left half done, and
    returns the steps this run takes (RV(steps)) and whether the next CA must be created
    (RV(create_next); the C(pki_builtin_ca) module creates it). A finished rollover leaves nothing to
    do unless O(again) asks for the next one."
  - O(step=switch) moves the active CA aside (C(-previous)) and the next one in its place.
  - "O(step=archive) writes C(rollover.json) into the active CA's folder, then moves the previous CA
    to C(-retired/<UTC time>): a run interrupted in between writes the record again and moves it."
options:
  ca_dir:
    description: The active CA's folder on the controller (the pki role's C(pki_builtin_ca_dir)).
    type: path
    required: true
  step:
    description: What to do; see the description.
    type: str
    required: true
    choices: [plan, switch, archive]
  until:
    description:
      - With O(step=plan), the phase to stop after (C(rotate_ca_until)); C(trust), C(switch) or C(retire).
      - Checked by the module, whose refusal names the variable to change.
    type: str
    default: retire
  again:
    description: With O(step=plan), roll over again although the active CA came from a finished rollover.
    type: bool
    default: false
  limit:
    description: With O(step=plan), the run's C(--limit) (C(ansible_limit)); any is refused.
    type: str
    default: ""
  backend:
    description: With O(step=plan), the fleet's C(pki_backend); only C(builtin) rolls over here.
    type: str
    default: builtin
notes:
  - Supports check mode; it says what it would move or write and changes nothing.
author: sevenleague
"""

EXAMPLES = r"""
- name: Find the phase
  pki_ca_rollover:
    step: plan
    ca_dir: "{{ pki_builtin_ca_dir }}"
    until: "{{ rotate_ca_until | default('retire') }}"
    limit: "{{ ansible_limit | default('') }}"
    backend: "{{ pki_backend }}"
  delegate_to: localhost
  run_once: true
  register: __rollover

- name: Move the active CA aside and the next one in
  pki_ca_rollover:
    step: switch
    ca_dir: "{{ __rollover.ca_dir }}"
  delegate_to: localhost
  run_once: true
  when: "'switch' in __rollover.steps"
"""

RETURN = r"""
ca_dir:
  description: The active CA's folder.
  returned: always
  type: str
next_dir:
  description: The next CA's folder (C(<ca_dir>-next)).
  returned: always
  type: str
previous_dir:
  description: The folder the switch moves the active CA to (C(<ca_dir>-previous)).
  returned: always
  type: str
done:
  description: With O(step=plan), whether the active CA came from a finished rollover and none is under way.
  returned: always
  type: bool
steps:
  description:
    - With O(step=plan), the steps this run takes, in order; empty when there is nothing to do.
    - C(trust) (every host trusts the next root, then the check before the switch), C(switch) (the switch
      and the renewal from the new CA), C(retire) (the check before the old root leaves, its removal, the archive).
  returned: always
  type: list
  elements: str
create_next:
  description: With O(step=plan), whether the next CA must exist in RV(next_dir) (it may already).
  returned: always
  type: bool
archive:
  description: With O(step=archive), the folder the previous CA moved to; empty when there was none.
  returned: always
  type: str
"""

import datetime
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

PHASES = ("trust", "switch", "retire")
RECORD = "rollover.json"


class Refusal(Exception):
    """A rollover this run must not start; the message says what to change."""


def folders(ca_dir: str) -> dict:
    ca_dir = ca_dir.rstrip("/")
    return {"ca_dir": ca_dir, "next_dir": f"{ca_dir}-next", "previous_dir": f"{ca_dir}-previous"}


def _has_ca(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "root.crt"))


def refusal(until: str, limit: str, backend: str) -> str | None:
    """Why this rollover must not start, in the order an operator fixes it; None when it may."""
    if until not in PHASES:
        return f"rotate_ca_until must be trust, switch or retire (the default), not {until}."
    if limit:
        return (
            f"rotate-ca.yml switches the CA of every host in the inventory, so it cannot run with --limit {limit}: "
            "hosts left out would stop trusting the others. Run it without --limit; a host that is down stops the "
            "rollover before the switch, and a rerun once it is back resumes."
        )
    if backend != "builtin":
        return (
            f"rotate-ca.yml rolls the built-in CA over; this fleet's pki_backend is {backend}. OpenBao's "
            "intermediate rolls over with playbooks/rotate-openbao-intermediate.yml."
        )
    return None


def decide(active: bool, nxt: bool, previous: bool, finished: bool, until: str, again: bool) -> dict:
    """The phase from what the folders hold: whether a half-done switch needs finishing, the steps
    left for this run, and whether the next CA must exist."""
    done = finished and not nxt and not previous and not again
    # Interrupted between the switch's two moves: the active folder is gone, the next one waits.
    finish_switch = not active and nxt and previous
    steps = []
    if not done:
        if not previous:
            steps.append("trust")
        if until != "trust":
            steps.append("switch")
        if until == "retire":
            steps.append("retire")
    return {"done": done, "finish_switch": finish_switch, "steps": steps, "create_next": not done and not previous}


def plan(ca_dir: str, until: str, again: bool, limit: str, backend: str, check_mode: bool) -> dict:
    why = refusal(until, limit, backend)
    if why:
        raise Refusal(why)
    paths = folders(ca_dir)
    decision = decide(
        active=_has_ca(paths["ca_dir"]),
        nxt=_has_ca(paths["next_dir"]),
        previous=_has_ca(paths["previous_dir"]),
        finished=os.path.exists(os.path.join(paths["ca_dir"], RECORD)),
        until=until,
        again=again,
    )
    if decision["finish_switch"] and not check_mode:
        os.rename(paths["next_dir"], paths["ca_dir"])
    return {
        **paths,
        "changed": decision["finish_switch"],
        "done": decision["done"],
        "steps": decision["steps"],
        "create_next": decision["create_next"],
        "archive": "",
    }


def switch(ca_dir: str, check_mode: bool) -> dict:
    """The active CA moves to -previous and the next one takes its place; done once -previous holds a CA."""
    paths = folders(ca_dir)
    needed = not _has_ca(paths["previous_dir"])
    if needed and not _has_ca(paths["next_dir"]):
        raise Refusal(
            f"{paths['next_dir']} holds no CA to switch to: run rotate-ca.yml from the start, which creates it."
        )
    if needed and not check_mode:
        os.rename(paths["ca_dir"], paths["previous_dir"])
        os.rename(paths["next_dir"], paths["ca_dir"])
    return {**paths, "changed": needed, "done": False, "steps": [], "create_next": False, "archive": ""}


def _write_private(path: str, text: str, move=os.replace) -> None:
    """`text` into `path` (mode 0600), put in place by `move` (the module's atomic_move) so no reader
    sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        move(tmp, path)
        # atomic_move gives a new file the umask's mode.
        os.chmod(path, 0o600)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def archive(ca_dir: str, now: datetime.datetime, check_mode: bool, move=os.replace) -> dict:
    """Record the finished rollover in the active CA's folder, then move the previous CA to the archive."""
    paths = folders(ca_dir)
    result = {**paths, "changed": False, "done": False, "steps": [], "create_next": False, "archive": ""}
    if not _has_ca(paths["previous_dir"]):
        return result
    retired = f"{paths['ca_dir']}-retired"
    target = os.path.join(retired, now.strftime("%Y%m%dT%H%M%SZ"))
    result.update(changed=True, archive=target)
    if check_mode:
        return result
    # Written before the old CA moves: a run interrupted in between writes it again and then moves it.
    record = {"finished": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "previous_ca": target}
    _write_private(os.path.join(paths["ca_dir"], RECORD), json.dumps(record, indent=4, sort_keys=True), move)
    os.makedirs(retired, mode=0o700, exist_ok=True)
    os.rename(paths["previous_dir"], target)
    return result


def run(params: dict, check_mode: bool, now: datetime.datetime | None = None, move=os.replace) -> dict:
    step = params["step"]
    if step == "plan":
        return plan(params["ca_dir"], params["until"], params["again"], params["limit"], params["backend"], check_mode)
    if step == "switch":
        return switch(params["ca_dir"], check_mode)
    return archive(params["ca_dir"], now or datetime.datetime.now(datetime.UTC), check_mode, move)


ARGUMENT_SPEC = {
    "ca_dir": {"type": "path", "required": True},
    "step": {"type": "str", "required": True, "choices": ["plan", "switch", "archive"]},
    "until": {"type": "str", "default": "retire"},
    "again": {"type": "bool", "default": False},
    "limit": {"type": "str", "default": ""},
    "backend": {"type": "str", "default": "builtin"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run(module.params, module.check_mode, move=module.atomic_move)
    except (Refusal, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
