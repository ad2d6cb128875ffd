"""The envoy role's configuration, from the inventory: a thin wrapper around module_utils/sevenleague_envoy.py.

    _envoy_config: >-
      {{ envoy_services | sevenleague_envoy_config(hostvars, groups['all'], inventory_hostname, _envoy_settings,
                                                   envoy_host_addresses) }}

Each host's `ansible_host` and `services` are read from the inventory (hostvars), never from
facts, and handed to the generator as plain data; its errors become filter errors naming the
inventory key to change.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from ansible.errors import AnsibleFilterError


def _generator():
    """sevenleague_envoy, from the repository's module_utils (where pytest also finds it)."""
    if "sevenleague_envoy" in sys.modules:
        return sys.modules["sevenleague_envoy"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "module_utils", "sevenleague_envoy.py")
    spec = importlib.util.spec_from_file_location("sevenleague_envoy", os.path.normpath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["sevenleague_envoy"] = module
    return module


def inventory_hosts(hostvars, names, addresses=None) -> dict:
    """name -> {"ansible_host", "services"} from the inventory's variables of each host;
    `addresses` (envoy_host_addresses) names the address where ansible_host is not it."""
    addresses = addresses or {}
    hosts = {}
    for name in names:
        hvars = hostvars[name] if name in hostvars else {}
        hosts[name] = {"ansible_host": addresses.get(name, hvars.get("ansible_host")),
                       "services": hvars.get("services") or []}
    return hosts


def envoy_config(services, hostvars, names, host, settings, addresses=None) -> dict:
    """generator.envoy_config() for `host`, with every inventory host in `names`."""
    generator = _generator()
    try:
        return generator.envoy_config(services, inventory_hosts(hostvars, names, addresses), host, settings)
    except generator.EnvoyConfigError as exc:
        raise AnsibleFilterError(f"envoy: {exc}") from None


def envoy_runtime(drained) -> dict:
    """The drain layer's file for the services in `drained`."""
    return _generator().runtime_document(drained)


def rollout(services, hostvars, names, service, addresses=None) -> dict:
    """generator.rollout(): the hosts running `service` and the Envoys that call it."""
    generator = _generator()
    try:
        return generator.rollout(services, inventory_hosts(hostvars, names, addresses), service)
    except generator.EnvoyConfigError as exc:
        raise AnsibleFilterError(f"deploy: {exc}") from None


class FilterModule:
    def filters(self):
        return {"sevenleague_envoy_config": envoy_config, "sevenleague_envoy_runtime": envoy_runtime,
                "sevenleague_rollout": rollout}
