"""The decisions of a rolling deploy (playbooks/deploy.yml): its plan, whom a failure leaves alone,
who did not answer, what the callers' Envoys see, and what to tell at the end.

    deploy_plan: >-
      {{ sevenleague_services | sevenleague_deploy_plan(hostvars, groups['all'], service, version,
                                                        deploy_serial, envoy_host_addresses) }}

The plan comes from the inventory only (each host's `services` and `ansible_host`, through the
collection's envoy_servicemap), never from facts. Its refusals are filter errors that say how to run
the deploy instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.sevenleague.platform.plugins.module_utils import envoy_servicemap
from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_servicemap import EnvoyConfigError

# A Debian version with its revision: upstream-revision, e.g. 1.2.0-1 or 1.1.0+rollout1-1.
VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~-]*-[A-Za-z0-9.+~]+$")
USAGE = (
    "Run it as `ansible-playbook playbooks/deploy.yml -e service=NAME -e version=X`, with the full Debian version of "
    "the package (upstream-revision, e.g. 1.2.0-1; `apt-cache madison NAME` on a host lists them); deploy_serial, "
    "when given, is a number of hosts of at least 1."
)


def _serial(value) -> int:
    """deploy_serial as a number of hosts; 0 (refused) for anything else, as Jinja's `int` reads it."""
    if isinstance(value, bool):
        return 0
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def _inventory(hostvars, names, addresses) -> dict:
    """name -> ansible_host and services, from the inventory's variables of each host."""
    addresses = addresses or {}
    return {
        name: {
            "ansible_host": addresses.get(name, (hostvars.get(name) or {}).get("ansible_host")),
            "services": (hostvars.get(name) or {}).get("services") or [],
        }
        for name in names
    }


def deploy_plan(services, hostvars, names, service, version, serial=1, addresses=None) -> dict:
    """The hosts running `service` in inventory order and in batches of `serial`, the callers whose
    Envoys balance over them, the package and the inventory's pin; refused when the inputs are not a
    deploy, no host runs the service, or one batch would drain every host its callers can reach."""
    serial = _serial(serial)
    if not (isinstance(service, str) and service and isinstance(version, str) and VERSION.match(version)):
        raise AnsibleFilterError(USAGE)
    if serial < 1:
        raise AnsibleFilterError(USAGE)
    try:
        rollout = envoy_servicemap.rollout(services, _inventory(hostvars, names, addresses), service)
    except EnvoyConfigError as exc:
        raise AnsibleFilterError(f"deploy: {exc}") from None
    hosts, callers = rollout["hosts"], rollout["callers"]
    if not hosts:
        raise AnsibleFilterError(
            f"No host runs {service}: add it to the `services` of the hosts that should run it, and converge them "
            "with site.yml first."
        )
    if callers and len(hosts) <= serial:
        raise AnsibleFilterError(
            f"{service} runs on {len(hosts)} host(s) and deploy_serial is {serial}: a batch would drain every host "
            f"its callers ({', '.join(callers)}) can reach, and their requests would fail. Run it on more hosts, or "
            "lower deploy_serial."
        )
    spec = services[service]
    return {
        **rollout,
        "version": version,
        "serial": serial,
        "batches": [hosts[i : i + serial] for i in range(0, len(hosts), serial)],
        "package": spec.get("package", service),
        "pinned": str(spec.get("version", "")),
    }


def later_hosts(plan: Mapping, host: str) -> list[str]:
    """The hosts of the batches after `host`'s: the ones a failure on `host` leaves untouched."""
    batches = plan["batches"]
    for index, batch in enumerate(batches):
        if host in batch:
            return [name for later in batches[index + 1 :] for name in later]
    return []


def unchecked(plan: Mapping, hostvars, strict: bool = False) -> list[str]:
    """The hosts that stop the deploy before it starts: the hosts of the rollout without
    `deploy_checked` (they did not answer, or failed a check), and the callers without it when
    `strict` (deploy_strict_callers)."""
    names = list(dict.fromkeys([*plan["hosts"], *(plan["callers"] if strict else [])]))
    return [name for name in names if not (hostvars.get(name) or {}).get("deploy_checked")]


def callers_down(plan: Mapping, hostvars) -> list[str]:
    """The callers without `deploy_checked`: down, or failing a check. Named in the run; they refuse
    the deploy only when the operator asks for every caller (deploy_strict_callers)."""
    return [name for name in plan["callers"] if not (hostvars.get(name) or {}).get("deploy_checked")]


def quorum(results, plan: Mapping, endpoint: str, state: str, strict: bool = False) -> dict:
    """Whether enough of the callers asked (`results`: a looped uri task's registered result, one
    item per caller, each the caller's Envoy /clusters) see `endpoint` `state` ("drained" or
    "healthy"). A majority of the callers asked must agree, or every caller of the plan when
    `strict`: one caller's word alone cannot pass or fail a host while others are there to ask."""
    if state not in ("drained", "healthy"):
        raise AnsibleFilterError(f"quorum: state must be drained or healthy, not {state!r}")
    items = [item for item in ((results or {}).get("results") or []) if isinstance(item, Mapping)]
    asked = [str(item.get("item")) for item in items]
    agree = [
        str(item.get("item"))
        for item in items
        if envoy_endpoint(item.get("content") or "", plan["cluster"], endpoint)[state]
    ]
    needed = len(plan["callers"]) if strict else len(asked) // 2 + 1 if asked else 0
    dissent = [name for name in asked if name not in agree]
    ok = len(agree) >= needed
    what = {"drained": "moved away from", "healthy": "healthy"}[state]
    message = (
        f"{len(agree)} of the {len(asked)} callers asked see {endpoint} {what}"
        f" ({', '.join(agree) or 'none'}); {needed} needed{' (every caller)' if strict else ''}"
    )
    if dissent:
        message += f"; not: {', '.join(dissent)}"
    return {"ok": ok, "agree": agree, "dissent": dissent, "needed": needed, "message": message}


def failure_reason(task, result) -> str:
    """`task name: why`, from ansible_failed_task and ansible_failed_result; a loop's own message
    only says an item failed, so the first failed item's says why."""
    name = (task or {}).get("name") or "a task"
    result = result if isinstance(result, Mapping) else {}
    failed = [item for item in result.get("results") or [] if isinstance(item, Mapping) and item.get("failed")]
    why = (failed[0].get("msg") if failed else None) or result.get("msg") or "failed"
    return f"{name}: {' '.join(str(why).split())}"


def envoy_endpoint(clusters: str, cluster: str, endpoint: str) -> dict:
    """One endpoint ("address:port") of `cluster` as an Envoy's /clusters shows it: its health flags
    and active requests, and whether it is drained (its health check fails and no request is left on
    it) or healthy."""
    prefix = f"{cluster}::{endpoint}::"
    stats = {}
    for line in (clusters or "").splitlines():
        if line.startswith(prefix):
            key, _, value = line[len(prefix) :].partition("::")
            stats[key] = value.strip()
    flags = stats.get("health_flags", "")
    try:
        active = int(stats.get("rq_active", "0"))
    except ValueError:
        active = 0
    return {
        "health_flags": flags,
        "rq_active": active,
        "drained": "failed_active_hc" in flags and active == 0,
        "healthy": flags == "healthy",
    }


def report(plan: Mapping, hostvars, check_mode: bool = False) -> str:
    """Where the rollout left each host, the callers that were down, and the inventory's pin when
    it names another version."""
    service, version = plan["service"], plan["version"]
    if check_mode:
        moving = [name for name in plan["hosts"] if (hostvars.get(name) or {}).get("deploy_previous") != version]
        text = f"Check mode, nothing changed: {service} {version} would go to {', '.join(moving) or 'no host'}."
    else:
        text = f"{service} {version} runs on {', '.join(plan['hosts'])}."
    down = callers_down(plan, hostvars)
    if down:
        text += f" Callers down, not asked: {', '.join(down)}."
    if plan["pinned"] != version:
        text += (
            f" The inventory pins {plan['pinned'] or 'the newest'}: set sevenleague_services.{service}.version to "
            f"{version}, or the next site.yml installs that again."
        )
    return text


class FilterModule:
    def filters(self):
        return {
            "sevenleague_deploy_plan": deploy_plan,
            "sevenleague_deploy_later": later_hosts,
            "sevenleague_deploy_unchecked": unchecked,
            "sevenleague_deploy_callers_down": callers_down,
            "sevenleague_deploy_quorum": quorum,
            "sevenleague_deploy_report": report,
            "sevenleague_failure_reason": failure_reason,
            "sevenleague_envoy_endpoint": envoy_endpoint,
        }
