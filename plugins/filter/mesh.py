"""The envoy role's configuration, from the inventory: a thin wrapper around the
collection's envoy_servicemap and envoy_render module_utils.

    _envoy_config: >-
      {{ envoy_services | sevenleague_envoy_config(hostvars, groups['all'], inventory_hostname, _envoy_settings,
                                                   envoy_host_addresses) }}

Each host's `ansible_host` and `services` are read from the inventory (hostvars), never from
facts, and handed to the generator as plain data; its errors become filter errors naming the
inventory key to change.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.sevenleague.platform.plugins.module_utils import envoy_render, envoy_servicemap
from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_servicemap import EnvoyConfigError


def inventory_hosts(hostvars, names, addresses=None) -> dict:
    """name -> {"ansible_host", "services"} from the inventory's variables of each host;
    `addresses` (envoy_host_addresses) names the address where ansible_host is not it."""
    addresses = addresses or {}
    hosts = {}
    for name in names:
        hvars = hostvars.get(name, {})
        hosts[name] = {
            "ansible_host": addresses.get(name, hvars.get("ansible_host")),
            "services": hvars.get("services") or [],
        }
    return hosts


def envoy_config(services, hostvars, names, host, settings, addresses=None) -> dict:
    """envoy_render.envoy_config() for `host`, with every inventory host in `names`."""
    try:
        return envoy_render.envoy_config(services, inventory_hosts(hostvars, names, addresses), host, settings)
    except EnvoyConfigError as exc:
        raise AnsibleFilterError(f"envoy: {exc}") from None


def envoy_runtime(drained) -> dict:
    """The drain layer's file for the services in `drained`."""
    return envoy_render.runtime_document(drained)


def rollout(services, hostvars, names, service, addresses=None) -> dict:
    """envoy_servicemap.rollout(): the hosts running `service` and the Envoys that call it."""
    try:
        return envoy_servicemap.rollout(services, inventory_hosts(hostvars, names, addresses), service)
    except EnvoyConfigError as exc:
        raise AnsibleFilterError(f"deploy: {exc}") from None


class FilterModule:
    def filters(self):
        return {
            "sevenleague_envoy_config": envoy_config,
            "sevenleague_envoy_runtime": envoy_runtime,
            "sevenleague_rollout": rollout,
        }
