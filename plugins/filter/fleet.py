"""Which hosts of the fleet did not show something: the gate of a rollover's phase.

    _missing: >-
      {{ groups['all'] | sevenleague_hosts_without(hostvars, '__pki_fleet_check', next_root, 'ca.pem') }}

Each host read its files back with ansible.builtin.slurp (registered under the name given, one
result or a loop's results, `ignore_unreachable` so a host that is down is named instead of ending
the play). A host shows the text when every file it read holds it. A host that did not answer, whose
read failed or was skipped, that read no file, or whose reads are another file's (left by an earlier
check of the same run) does not: the gate stops rather than trust a host it did not hear from.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping


def _shows(read, text: str, filename: str | None) -> bool:
    if not isinstance(read, Mapping) or any(read.get(flag) for flag in ("failed", "unreachable", "skipped")):
        return False
    if "content" not in read or (filename and not str(read.get("source", "")).endswith(f"/{filename}")):
        return False
    try:
        content = base64.b64decode(str(read["content"]), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return False
    return text in content


def hosts_without(names, hostvars, register: str, text: str, filename: str | None = None) -> list[str]:
    """The hosts in `names` whose reads registered as `register` do not all hold `text` (trimmed);
    with `filename`, reads of another file do not count."""
    text = str(text).strip()
    missing = []
    for name in names:
        result = (hostvars.get(name) or {}).get(register)
        reads = result.get("results", [result]) if isinstance(result, Mapping) else []
        if not text or not reads or not all(_shows(read, text, filename) for read in reads):
            missing.append(name)
    return missing


class FilterModule:
    def filters(self):
        return {"sevenleague_hosts_without": hosts_without}
