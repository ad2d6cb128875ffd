"""Fail a check-mode run that reports a change.

Molecule's check step runs the converge playbook with --check after the idempotence step and
looks only at ansible-playbook's exit code. On a converged host check mode must report no
change: a task that says it would change what is already in place misleads every later
--check --diff. This callback lists the tasks that reported a change and ends the run with
exit code 2, the code of a failed host. A run without --check is left alone.
"""

from __future__ import annotations

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: unchanged_in_check_mode
type: aggregate
short_description: fail a --check run that reports a change
description:
  - After a run with --check, lists the tasks that reported a change and exits 2 when there is one.
  - Does nothing on a run without --check.
requirements:
  - enabled in callbacks_enabled (the shared Molecule config enables it)
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "unchanged_in_check_mode"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._changed: list[str] = []

    def v2_runner_on_ok(self, result) -> None:
        if result.is_changed():
            self._changed.append(f"[{result.host.get_name()}] => {result.task.get_name()}")

    def v2_playbook_on_stats(self, stats) -> None:
        if not context.CLIARGS.get("check"):
            return
        changed = sum(stats.changed.values())
        if not changed:
            return
        tasks = "\n".join(f"* {line}" for line in self._changed)
        self._display.error(f"check mode reported {changed} change(s) on converged hosts:\n{tasks}")
        # Ansible turns a callback's exceptions into warnings; SystemExit ends the run with this code.
        raise SystemExit(2)
