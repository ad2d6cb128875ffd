"""Check a role's variables against its argument spec without type coercion.

Ansible's own role argument validation converts where it can: the string
"10.0.0.0/8" passes as a list, "yes" as a bool.  The role then uses the
original value, and a template that loops over a "list" loops over
characters.  This action reads meta/argument_specs.yml of the role and fails
when a variable's real type differs from its spec, naming the variable.

    - name: Check the types of the role's variables
      strict_types:
        entry_point: main        # default
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import yaml
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
name: strict_types
short_description: Fail when a role variable's real type differs from its argument spec
description:
  - Reads C(meta/argument_specs.yml) of the running role and checks every option's value as
    the inventory gives it, without the conversions Ansible's own validation applies.
options:
  entry_point:
    description: Entry point of the argument spec to check.
    type: str
    default: main
  spec_file:
    description: Argument spec file; defaults to the running role's.
    type: path
"""

_NAMES = {
    "list": "a list",
    "dict": "a mapping",
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "path": "a path string",
}


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"the boolean {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"a {type(value).__name__}"


def _type_ok(kind: str, value) -> bool:
    if kind in ("raw", None):
        return True
    if kind in ("str", "path"):
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, Mapping)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def check_value(name: str, spec: Mapping, value) -> list[str]:
    """Problems with one value against its option spec (empty when fine)."""
    kind = spec.get("type", "str")
    if value is None and not spec.get("required"):
        return []
    if not _type_ok(kind, value):
        if spec.get("no_log"):
            return [f"{name} must be {_NAMES.get(kind, kind)}, but is a {type(value).__name__} (value hidden)"]
        hint = ""
        if kind == "list" and isinstance(value, str):
            hint = f" (write it as a YAML list: [{value}])"
        return [f"{name} must be {_NAMES.get(kind, kind)}, but is {_describe(value)}{hint}"]
    problems = []
    choices = spec.get("choices")
    if choices is not None and kind != "list" and value not in choices:
        shown = "a value" if spec.get("no_log") else repr(value)
        problems.append(f"{name} is {shown}; choose one of {', '.join(map(str, choices))}")
    if kind == "list":
        elements = spec.get("elements")
        for index, item in enumerate(value):
            item_name = f"{name}[{index}]"
            if elements and not _type_ok(elements, item):
                problems.append(f"{item_name} must be {_NAMES.get(elements, elements)}, but is {_describe(item)}")
            elif elements == "dict" and spec.get("options"):
                problems.extend(check_options(spec["options"], item, prefix=item_name + "."))
            elif choices is not None and item not in choices:
                problems.append(f"{item_name} is {item!r}; choose from {', '.join(map(str, choices))}")
    elif kind == "dict" and spec.get("options"):
        problems.extend(check_options(spec["options"], value, prefix=name + "."))
    return problems


def check_options(options: Mapping, values: Mapping, prefix: str = "") -> list[str]:
    """Problems with a mapping of values against a mapping of option specs.

    Top-level options that are not in `values` are skipped (the role's
    defaults supply them); inside a sub-mapping, unknown keys and missing
    required keys are problems, since no default can fill them.
    """
    problems = []
    for name, spec in options.items():
        spec = spec or {}
        if name not in values:
            if prefix and spec.get("required"):
                problems.append(f"{prefix}{name} is required")
            continue
        problems.extend(check_value(prefix + name, spec, values[name]))
    if prefix:
        for key in values:
            if key not in options:
                problems.append(f"{prefix}{key} is not a known key; use one of {', '.join(options)}")
    return problems


def load_options(spec_file: str, entry_point: str) -> Mapping:
    with open(spec_file, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    specs = document.get("argument_specs") or {}
    if entry_point not in specs:
        raise AnsibleActionFail(f"{spec_file} has no entry point {entry_point!r}")
    return specs[entry_point].get("options") or {}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("entry_point", "spec_file"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        entry_point = self._task.args.get("entry_point", "main")
        spec_file = self._task.args.get("spec_file")
        if not spec_file:
            role = self._task._role
            if role is None:
                raise AnsibleActionFail("strict_types runs inside a role, or needs spec_file")
            spec_file = os.path.join(role._role_path, "meta", "argument_specs.yml")
        options = load_options(spec_file, entry_point)
        values = {}
        for name in options:
            if name in task_vars:
                try:
                    values[name] = self._templar.template(task_vars[name])
                except AnsibleError:
                    # A value that cannot be computed yet (a file a later play writes, a
                    # lookup of a secret) is checked where the role uses it.
                    continue
        problems = check_options(options, values)
        result["changed"] = False
        if problems:
            result["failed"] = True
            result["msg"] = "Fix these variables in the inventory (group_vars, host_vars or -e): " + "; ".join(problems)
        else:
            result["msg"] = f"{len(values)} variables match their spec"
        return result
