#!/usr/bin/python
"""OpenBao's side of the intermediate CA's rollover: which phase, the new intermediate, the old one's end."""

from __future__ import annotations

DOCUMENTATION = r"""
module: openbao_intermediate
short_description: Add a new intermediate CA beside OpenBao's active one, or retire the old one
description:
  - "OpenBao's intermediate rolls over (C(playbooks/rotate-openbao-intermediate.yml)) in three
    phases: a new intermediate, signed by the same root, joins the intermediate mount; every host's
    certificates are renewed from it; once every host shows a chain from it, the root revokes the
    old one and the mount deletes it. The mount's signing issuers (the root's imported copy has no
    key and does not count) say which phase is done, so a run resumes where one stopped."
  - "O(step=add) refuses a rollover of part of the fleet (O(limit)) or up to an unknown phase
    (O(until)), reads the signing issuers, oldest key first (a rollover names the key it adds
    C(intermediate-<UTC time>); the first one's has no name), and the O(record) of finished
    rollovers. One issuer that the record names is a finished rollover: nothing to do unless
    O(again). One issuer otherwise: a new key and CSR are made inside OpenBao, the root signs it as
    the first one was, and it joins the mount. Then the mount must hold exactly two, the old
    (RV(old)) and the new (RV(new)); more are refused with how to remove them. The mount's default
    issuer is left alone: the caller makes the new one the default once the login trusts it."
  - "O(step=retire) retires O(issuer_id): the root revokes its certificate (it leaves the root's
    CRL only when it expires), and the mount deletes it and its key. It refuses to retire the
    mount's default issuer or its only signing one. An issuer already gone is no change."
requirements:
  - Nothing beyond Python; OpenBao's API through the collection's C(openbao) module_utils.
options:
  url:
    description: Address of OpenBao, e.g. C(https://ca1.example.internal:8200).
    type: str
    required: true
  token:
    description: OpenBao token of Ansible (the policy C(sevenleague-ansible) allows every call here).
    type: str
    required: true
  ca_cert:
    description: CA bundle (PEM file) that verifies OpenBao's TLS certificate; without it the system's trust store is used.
    type: path
  timeout:
    description: Seconds to wait for OpenBao per request.
    type: int
    default: 10
  step:
    description: What to do; see the description.
    type: str
    required: true
    choices: [add, retire]
  root_mount:
    description: Mount of the root PKI, which signs and revokes intermediates.
    type: str
    default: pki
  int_mount:
    description: Mount of the intermediate PKI, whose issuers roll over.
    type: str
    default: pki_int
  common_name:
    description: With O(step=add), the new intermediate's common name.
    type: str
    default: ""
  ttl:
    description: With O(step=add), the new intermediate's lifetime, as OpenBao takes it (C(43800h)).
    type: str
    default: ""
  permitted_dns_domains:
    description: With O(step=add), the DNS domains the new intermediate may sign for (its name constraints).
    type: list
    elements: str
    default: []
  record:
    description:
      - With O(step=add), the controller's JSON record of the last finished rollover (its C(issuer)), which the
        caller writes once the old intermediate is retired.
    type: path
  again:
    description: With O(step=add), roll over although the intermediate came from a finished rollover.
    type: bool
    default: false
  until:
    description: With O(step=add), the phase to stop after (C(rotate_openbao_until)); C(trust) or C(retire).
    type: str
    default: retire
  limit:
    description: With O(step=add), the run's C(--limit) (C(ansible_limit)); any is refused.
    type: str
    default: ""
  issuer_id:
    description: With O(step=retire), the issuer to retire (RV(old) of O(step=add)).
    type: str
    default: ""
notes:
  - Supports check mode; it reads, says what it would add or retire, and writes nothing.
author: sevenleague
"""

EXAMPLES = r"""
- name: Add a new intermediate beside the active one
  openbao_intermediate:
    url: https://ca1.example.internal:8200
    token: "{{ _openbao_token }}"
    step: add
    common_name: example Intermediate CA
    ttl: 43800h
    permitted_dns_domains: [example.internal]
    record: /srv/state/.openbao/intermediate-rollover.json
  delegate_to: localhost
  register: __rollover

- name: Retire the old one
  openbao_intermediate:
    url: https://ca1.example.internal:8200
    token: "{{ _openbao_token }}"
    step: retire
    issuer_id: "{{ __rollover.old.issuer_id }}"
  delegate_to: localhost
"""

RETURN = r"""
done:
  description: With O(step=add), whether the intermediate came from a finished rollover and there is nothing to do.
  returned: always
  type: bool
steps:
  description:
    - With O(step=add), what the run does after this step, in order; empty when it is done or stops after C(trust).
    - C(renew) (every host's certificates from the new intermediate), C(retire) (the check that every host
      shows a chain from it, then the old one's end).
  returned: always
  type: list
  elements: str
issuers:
  description: The signing issuers after this step, oldest key first (C(issuer_id), C(key_id), C(key_name)).
  returned: always
  type: list
  elements: dict
old:
  description: With O(step=add), the intermediate the rollover replaces (C(issuer_id), C(key_id), C(key_name), C(certificate)).
  returned: when a rollover is under way
  type: dict
new:
  description: With O(step=add), the intermediate it adds; empty values in check mode before it exists.
  returned: when a rollover is under way
  type: dict
"""

import datetime
import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sevenleague.platform.plugins.module_utils.openbao import OpenBao, OpenBaoError

ISSUER_FIELDS = ("issuer_id", "key_id", "key_name", "certificate")


class Refusal(Exception):
    """A rollover step this run must not take; the message says what to change."""


def signing_issuers(api, mount: str) -> list[dict]:
    """The mount's issuers that have a key, oldest key first (by the key's name: the first one's has none)."""
    _, listing = api.read(f"{mount}/issuers?list=true")
    issuers = []
    for issuer_id in sorted(listing.get("key_info") or {}):
        if not (listing["key_info"][issuer_id] or {}).get("key_id"):
            continue
        _, issuer = api.read(f"{mount}/issuer/{issuer_id}")
        _, key = api.read(f"{mount}/key/{issuer['key_id']}")
        issuers.append(
            {
                "issuer_id": issuer_id,
                "key_id": issuer["key_id"],
                "key_name": key.get("key_name") or "",
                "certificate": issuer.get("certificate", "").strip(),
            }
        )
    return sorted(issuers, key=lambda issuer: issuer["key_name"])


def read_record(path: str | None) -> dict:
    """The record of the last finished rollover; {} when there is none (or it is unreadable)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as record:
            document = json.load(record)
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def refusal(until: str, limit: str) -> str | None:
    if limit or until not in ("trust", "retire"):
        return (
            "The rollover retires the old intermediate only when every host in the inventory holds a certificate "
            "from the new one, so it cannot run with --limit; rotate_openbao_until is trust or retire (the default)."
        )
    return None


def finished(issuers: list[dict], record: dict, again: bool) -> bool:
    """One signing issuer, the one the last finished rollover left, and no new rollover asked for."""
    return len(issuers) == 1 and record.get("issuer", "") == issuers[0]["issuer_id"] and not again


def unexpected(mount: str, issuers: list[dict]) -> str:
    ids = ", ".join(issuer["issuer_id"] for issuer in issuers)
    return (
        f"The intermediate mount {mount} holds {len(issuers)} issuers ({ids}); a rollover expects the active one "
        f"and the one it adds. Delete the extra ones (bao delete {mount}/issuer/<id>) after checking no host's "
        "certificate comes from them."
    )


def _listed(issuers: list[dict]) -> list[dict]:
    return [{key: issuer[key] for key in ("issuer_id", "key_id", "key_name")} for issuer in issuers]


def add_intermediate(api, params: dict, now: datetime.datetime) -> None:
    """A new key and CSR inside OpenBao, signed by the root as the first intermediate was, joined to the mount."""
    csr = api.write(
        f"{params['int_mount']}/intermediate/generate/internal",
        {
            "common_name": params["common_name"],
            "key_type": "ec",
            "key_bits": 256,
            "key_name": f"intermediate-{now.strftime('%Y%m%dT%H%M%SZ')}",
        },
    )["csr"]
    signed = api.write(
        f"{params['root_mount']}/root/sign-intermediate",
        {
            "csr": csr,
            "common_name": params["common_name"],
            "ttl": params["ttl"],
            "permitted_dns_domains": params["permitted_dns_domains"],
            "format": "pem_bundle",
        },
    )
    api.write(
        f"{params['int_mount']}/intermediate/set-signed",
        {"certificate": f"{signed['certificate']}\n{signed['issuing_ca']}"},
    )


def add(api, params: dict, check_mode: bool, now: datetime.datetime) -> dict:
    why = refusal(params["until"], params["limit"])
    if why:
        raise Refusal(why)
    mount = params["int_mount"]
    issuers = signing_issuers(api, mount)
    if finished(issuers, read_record(params["record"]), params["again"]):
        return {"changed": False, "done": True, "steps": [], "issuers": _listed(issuers)}
    changed = len(issuers) == 1
    if changed and check_mode:
        new = dict.fromkeys(ISSUER_FIELDS, "")
        return {"changed": True, "done": False, "steps": [], "issuers": _listed(issuers), "old": issuers[0], "new": new}
    if changed:
        add_intermediate(api, params, now)
        issuers = signing_issuers(api, mount)
    if len(issuers) != 2:
        raise Refusal(unexpected(mount, issuers))
    return {
        "changed": changed,
        "done": False,
        "steps": ["renew", "retire"] if params["until"] == "retire" else [],
        "issuers": _listed(issuers),
        "old": issuers[0],
        "new": issuers[-1],
    }


def retire(api, params: dict, check_mode: bool) -> dict:
    mount, issuer_id = params["int_mount"], params["issuer_id"]
    if not issuer_id:
        raise Refusal("step=retire needs issuer_id: the intermediate to retire (old.issuer_id of step=add).")
    issuers = signing_issuers(api, mount)
    result = {"changed": False, "done": False, "steps": [], "issuers": _listed(issuers)}
    retiring = [issuer for issuer in issuers if issuer["issuer_id"] == issuer_id]
    if not retiring:
        return result
    _, config = api.read(f"{mount}/config/issuers")
    if config.get("default") == issuer_id or len(issuers) == 1:
        raise Refusal(
            f"Not retiring {issuer_id}: it is the default or the only signing issuer of {mount}, so hosts "
            "could not renew. Make the new intermediate the default (a rollover's first phase does) and run again."
        )
    result["changed"] = True
    if not check_mode:
        api.write(f"{params['root_mount']}/revoke", {"certificate": retiring[0]["certificate"]})
        api.delete(f"{mount}/issuer/{issuer_id}")
        api.delete(f"{mount}/key/{retiring[0]['key_id']}")
        result["issuers"] = _listed(signing_issuers(api, mount))
    return result


def run(api, params: dict, check_mode: bool, now: datetime.datetime | None = None) -> dict:
    if params["step"] == "add":
        return add(api, params, check_mode, now or datetime.datetime.now(datetime.UTC))
    return retire(api, params, check_mode)


ARGUMENT_SPEC = {
    "url": {"type": "str", "required": True},
    "token": {"type": "str", "required": True, "no_log": True},
    "ca_cert": {"type": "path"},
    "timeout": {"type": "int", "default": 10},
    "step": {"type": "str", "required": True, "choices": ["add", "retire"]},
    "root_mount": {"type": "str", "default": "pki"},
    "int_mount": {"type": "str", "default": "pki_int"},
    "common_name": {"type": "str", "default": ""},
    "ttl": {"type": "str", "default": ""},
    "permitted_dns_domains": {"type": "list", "elements": "str", "default": []},
    "record": {"type": "path"},
    "again": {"type": "bool", "default": False},
    "until": {"type": "str", "default": "retire"},
    "limit": {"type": "str", "default": ""},
    "issuer_id": {"type": "str", "default": ""},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    api = OpenBao(params["url"], ca_cert=params["ca_cert"], token=params["token"], timeout=params["timeout"])
    try:
        result = run(api, params, module.check_mode)
    except (Refusal, OpenBaoError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
