#!/usr/bin/python
"""Idempotent writes to OpenBao's API: read first, write only what differs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: openbao_write
short_description: Write an OpenBao API path only when what is there differs, so a second run changes nothing
description:
  - "Reads O(read_path) (default O(path)) and compares it with O(data): every key of O(data) must be
    present with an equal value. Durations compare by their length (C(24h) equals C(86400)), a
    comma-separated string equals the list of its items, and nested dictionaries compare key by key.
    When something differs (O(state=present)) or when nothing is there yet (O(state=once)), it writes
    O(data) to O(path)."
  - "O(state=once) is for operations that create something and must not run twice: enabling a
    secrets engine or an auth method, generating a CA key. O(state=read) only reads."
  - "Errors name the cause: OpenBao unreachable, sealed, a token without permission, a refused write
    with OpenBao's own message."
requirements:
  - Nothing beyond Python; OpenBao's API through the collection's C(openbao) module_utils, the client the hosts' tool uses too.
options:
  url:
    description:
      - Address of OpenBao, e.g. C(https://ca1.example.internal:8200), or C(unix:///run/openbao/api.sock) for
        the server's unix listener, run on the server itself (plain HTTP; O(ca_cert) is not used).
    type: str
    required: true
  token:
    description:
      - OpenBao token allowed to read and write O(path). Empty for the calls that take none
        (C(sys/seal-status), C(sys/health), C(sys/init), C(sys/unseal)).
    type: str
    default: ""
  ca_cert:
    description: CA bundle (PEM file) that verifies OpenBao's TLS certificate; without it the system's trust store is used.
    type: path
  path:
    description: API path without C(/v1/), e.g. C(pki_int/roles/host).
    type: str
    required: true
  read_path:
    description: Path whose answer tells what is there; defaults to O(path) (C(sys/mounts/pki/tune) for a tune, for example).
    type: str
  data:
    description: The body to write, and what the answer of O(read_path) must contain.
    type: dict
    default: {}
  state:
    description:
      - C(present) writes when O(read_path) lacks O(data) or holds other values.
      - C(once) writes only when O(read_path) holds nothing (absent, or an error such as "no default issuer").
      - C(read) never writes.
      - C(write) writes without reading first, for operations (generate a CSR, sign, import) whose path
        cannot be read; the caller decides when (C(when:)), and the task always reports a change.
      - C(absent) deletes O(path) when O(read_path) holds something, e.g. the role of a retired host.
    type: str
    choices: [present, once, read, write, absent]
    default: present
  timeout:
    description: Seconds to wait for OpenBao per request.
    type: int
    default: 10
notes:
  - Supports check mode; it reads, reports what it would write and writes nothing.
author: sevenleague
"""

EXAMPLES = r"""
- name: Enable the intermediate PKI engine
  openbao_write:
    url: https://ca1.example.internal:8200
    token: "{{ openbao_root_token }}"
    ca_cert: /etc/ssl/openbao-ca.pem
    path: sys/mounts/pki_int
    data: {type: pki}
    state: once
  delegate_to: localhost

- name: The host role signs for the fleet's domain, for a day at most
  openbao_write:
    url: https://ca1.example.internal:8200
    token: "{{ openbao_root_token }}"
    path: pki_int/roles/host
    data: {allowed_domains: [example.internal], allow_subdomains: true, max_ttl: 24h}
  delegate_to: localhost
"""

RETURN = r"""
existed:
  description: Whether O(read_path) held something before the write.
  returned: always
  type: bool
differences:
  description: The keys of O(data) that differed (or were missing) before the write.
  returned: always
  type: list
  elements: str
current:
  description: What O(read_path) held before the write (its C(data) part when it has one).
  returned: always
  type: dict
response:
  description: The C(data) part of the write's answer (e.g. the CSR or certificate an operation returns); empty when nothing was written.
  returned: always
  type: dict
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sevenleague.platform.plugins.module_utils.openbao import SEALED_HINT, OpenBao, Refused
from ansible_collections.sevenleague.platform.plugins.module_utils.openbao import OpenBaoError as ApiError

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class OpenBaoError(Exception):
    """Something the operator must fix; the message names it."""


def seconds(value) -> int | None:
    """A duration as OpenBao accepts it (int seconds, "90s", "24h", "1h30m") in seconds, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not text or not match:
        return None
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


def same(want, have) -> bool:
    """Whether `have` (what OpenBao answers) already holds `want` (what we would write)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(key in have and same(value, have[key]) for key, value in want.items())
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(want, bool) and isinstance(have, bool) and want == have
    if isinstance(want, list) or isinstance(have, list):

        def items(value):
            if isinstance(value, list):
                return [str(item).strip() for item in value]
            return [part.strip() for part in str(value).split(",") if part.strip()]

        return items(want) == items(have)
    if isinstance(have, int):
        return seconds(want) == have
    if isinstance(want, str) and isinstance(have, str):
        return want.strip() == have.strip()
    return want == have


def differences(want: dict, have: dict) -> list[str]:
    return sorted(key for key, value in want.items() if key not in have or not same(value, have[key]))


class Client:
    """OpenBao through the shared client, with messages that say what the operator must fix."""

    def __init__(self, url: str, token: str, ca_cert: str | None, timeout: int):
        self.url = url.rstrip("/")
        self.api = OpenBao(self.url, ca_cert=ca_cert, token=token, timeout=timeout)

    def _explain(self, exc: ApiError, what: str) -> OpenBaoError:
        if exc.status == 503 and "sealed" in exc.errors.lower():
            return OpenBaoError(f"OpenBao at {self.url} is sealed: {SEALED_HINT}")
        if exc.status in (401, 403):
            return OpenBaoError(
                f"OpenBao at {self.url} denied {what}: {exc.errors}; the token lacks the permission, or expired"
            )
        if isinstance(exc, Refused) or exc.status:
            return OpenBaoError(f"OpenBao at {self.url} refused {what}: {exc.errors}")
        return OpenBaoError(
            f"OpenBao at {self.url} is unreachable while {what}: {exc}; check the address, that it "
            f"runs and that the firewall lets this node in"
        )

    def read(self, path: str) -> tuple[bool, dict]:
        """(exists, data) for `path`; an answer that says "nothing here" counts as absent."""
        try:
            return self.api.read(path)
        except ApiError as exc:
            raise self._explain(exc, f"reading {path}") from None

    def write(self, path: str, data: dict) -> dict:
        try:
            return self.api.write(path, data)
        except ApiError as exc:
            raise self._explain(exc, f"writing {path}") from None

    def delete(self, path: str) -> None:
        try:
            self.api.delete(path)
        except ApiError as exc:
            raise self._explain(exc, f"deleting {path}") from None


def run(client, params: dict, check_mode: bool) -> dict:
    path, state, data = params["path"].strip("/"), params["state"], params["data"] or {}
    read_path = (params["read_path"] or path).strip("/")
    existed, current = client.read(read_path) if state != "write" else (False, {})
    diff = differences(data, current) if existed else sorted(data)
    needed = {
        "present": bool(diff) or not existed,
        "once": not existed,
        "read": False,
        "write": True,
        "absent": existed,
    }[state]
    result = {
        "changed": needed,
        "existed": existed,
        "differences": diff if needed and state != "absent" else [],
        "current": current,
        "response": {},
    }
    if needed and not check_mode:
        if state == "absent":
            client.delete(path)
        else:
            result["response"] = client.write(path, data)
    return result


ARGUMENT_SPEC = {
    "url": {"type": "str", "required": True},
    "token": {"type": "str", "default": "", "no_log": True},
    "ca_cert": {"type": "path"},
    "path": {"type": "str", "required": True},
    "read_path": {"type": "str"},
    "data": {"type": "dict", "default": {}},
    "state": {"type": "str", "default": "present", "choices": ["present", "once", "read", "write", "absent"]},
    "timeout": {"type": "int", "default": 10},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    try:
        client = Client(params["url"], params["token"], params["ca_cert"], params["timeout"])
        result = run(client, params, module.check_mode)
    except OpenBaoError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
