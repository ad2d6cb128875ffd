"""Prometheus targets from the inventory.

One file_sd target group per host: its address from the inventory
(ansible_host, else the inventory name), and the labels that name it, so every
series says which host it is by its inventory name, never by address:port.
Nothing a host reports goes in.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError


def _address(value: str) -> str:
    try:
        if ipaddress.ip_address(value).version == 6:
            return f"[{value}]"
    except ValueError:
        pass
    return value


def file_sd_targets(hosts, hostvars, port, env: str) -> list[dict]:
    """[{targets: [address:port], labels: {instance, env, group}}, ...] in the hosts' order.

    group is the host's inventory groups (not all or ungrouped), sorted and joined with commas.
    """
    if not isinstance(hosts, list):
        raise AnsibleFilterError(f"prometheus_file_sd_targets: hosts must be a list, got {hosts!r}")
    out = []
    for host in hosts:
        if host not in hostvars:
            raise AnsibleFilterError(f"prometheus_file_sd_targets: {host} is not in the inventory")
        hvars = hostvars[host]
        address = hvars.get("ansible_host") or host
        groups = sorted(set(hvars.get("group_names") or []) - {"all", "ungrouped"})
        out.append(
            {
                "targets": [f"{_address(str(address))}:{int(port)}"],
                "labels": {"instance": host, "env": env, "group": ",".join(groups)},
            }
        )
    return out


class FilterModule:
    def filters(self):
        return {"prometheus_file_sd_targets": file_sd_targets}
