"""The inventory's service map, checked: which host serves and calls what, and who runs a service.

The inventory is the mesh's control plane:

- the service map (`sevenleague_services`): per service its app's loopback `port`, its
  `mesh_port` (the inbound mutual-TLS listener on each host running it), its `egress_port`
  (the loopback listener its callers' apps use), the services it `calls`, and optional
  per-service `resilience` overrides;
- per host: `ansible_host` (an IP address) and `services`, the services it runs.

`plan()` is one host's share of it (envoy_xds renders it), `rollout()` a service's hosts and
callers (the deploy's plan). Nothing a host reports goes in: addresses and names come from the
inventory. Every inconsistency raises EnvoyConfigError naming the inventory key to change,
before Envoy ever sees a configuration.
"""

from __future__ import annotations

import ipaddress
import re

# Per-upstream (and, for rate_limit_rps, per-inbound) settings: the role's defaults
# (envoy_<key>) and a service's `resilience` overrides use these keys.
RESILIENCE_KEYS = {
    "connect_timeout_ms": int,
    "request_timeout_ms": int,
    "retries": int,
    "retry_on": str,
    "retry_budget_percent": int,
    "max_connections": int,
    "max_pending_requests": int,
    "max_requests": int,
    "max_retries": int,
    "outlier_consecutive_5xx": int,
    "outlier_interval_ms": int,
    "outlier_base_ejection_ms": int,
    "outlier_max_ejection_percent": int,
    "health_check_interval_ms": int,
    "health_check_timeout_ms": int,
    "health_check_unhealthy_threshold": int,
    "health_check_healthy_threshold": int,
    "health_check_path": str,
    "rate_limit_rps": int,
}
# Lowest value of each integer setting; percentages also have a highest.
_MINIMUM = {"retries": 0, "max_retries": 0}
_PERCENT = {"retry_budget_percent", "outlier_max_ejection_percent"}
# Envoy's retry_on conditions for HTTP routes.
RETRY_ON = {
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
}

SETTINGS_KEYS = {
    "admin_socket",
    "metrics_port",
    "metrics_callers",
    "xds_dir",
    "sds_dir",
    "pki_dir",
    "node_cluster",
    "max_heap_bytes",
    "max_downstream_connections",
    "buffer_limit_bytes",
    "resilience",
}
# The app role reads `version` and `config` of the same map.
SERVICE_KEYS = {"package", "port", "mesh_port", "egress_port", "calls", "resilience", "version", "config"}

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# An inventory name as it stands in a certificate's DNS SAN.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*$"
)
_PATH = re.compile(r"^/[A-Za-z0-9._~/%-]*$")
# Envoy runs as its own user with no capabilities: it cannot bind privileged ports.
_LOWEST_PORT = 1024
# sun_path holds 108 bytes, the last a NUL.
_MAX_SOCKET_PATH = 107
_MAX_UINT32 = 2**32 - 1


class EnvoyConfigError(Exception):
    """The inventory or the role's settings cannot make a working configuration; the message says what to change."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_port(where: str, value, lowest: int = 1) -> int:
    if not _is_int(value) or not lowest <= value <= 65535:
        raise EnvoyConfigError(f"{where} must be a TCP port from {lowest} to 65535, not {value!r}")
    return value


def check_resilience(where: str, values, complete: bool = False) -> dict:
    """A mapping of resilience settings, checked; `complete` requires every key (the role's defaults)."""
    if not isinstance(values, dict):
        raise EnvoyConfigError(f"{where} must be a mapping of {', '.join(sorted(RESILIENCE_KEYS))}")
    unknown = sorted(set(values) - set(RESILIENCE_KEYS))
    if unknown:
        raise EnvoyConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(RESILIENCE_KEYS))}"
        )
    missing = sorted(set(RESILIENCE_KEYS) - set(values)) if complete else []
    if missing:
        raise EnvoyConfigError(f"{where}: missing {', '.join(missing)}")
    for key, value in values.items():
        if RESILIENCE_KEYS[key] is int:
            lowest = _MINIMUM.get(key, 1)
            highest = 100 if key in _PERCENT else _MAX_UINT32
            if not _is_int(value) or not lowest <= value <= highest:
                raise EnvoyConfigError(
                    f"{where}.{key} must be a whole number from {lowest} to {highest}, not {value!r}"
                )
        elif key == "retry_on":
            conditions = value.split(",") if isinstance(value, str) else []
            bad = [c for c in conditions if c not in RETRY_ON]
            if not conditions or bad:
                raise EnvoyConfigError(
                    f"{where}.retry_on must be comma-separated conditions from "
                    f"{', '.join(sorted(RETRY_ON))}, not {value!r}"
                )
        elif key == "health_check_path" and (not isinstance(value, str) or not _PATH.match(value)):
            raise EnvoyConfigError(
                f"{where}.health_check_path must be an absolute URL path without a query, not {value!r}"
            )
    return dict(values)


def check_services(services) -> dict:
    """The service map with its defaults filled in, or EnvoyConfigError naming what to change."""
    where = "sevenleague_services"
    if not isinstance(services, dict):
        raise EnvoyConfigError(f"{where} must be a mapping of service name to its settings")
    out = {}
    for name, spec in services.items():
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            raise EnvoyConfigError(
                f"{where}: service name {name!r} must be lowercase letters, digits and _, starting "
                "with a letter (it names listeners, clusters and metrics)"
            )
        here = f"{where}.{name}"
        if not isinstance(spec, dict):
            raise EnvoyConfigError(f"{here} must be a mapping (port, mesh_port, egress_port, calls)")
        unknown = sorted(set(spec) - SERVICE_KEYS)
        if unknown:
            raise EnvoyConfigError(
                f"{here}: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(SERVICE_KEYS))}"
            )
        for key in ("port", "mesh_port"):
            if key not in spec:
                raise EnvoyConfigError(f"{here}.{key} is required")
        package = spec.get("package", name)
        if not isinstance(package, str) or not re.match(r"^[a-z0-9][a-z0-9.+-]+$", package):
            raise EnvoyConfigError(f"{here}.package must be a Debian package name, not {package!r}")
        calls = spec.get("calls", [])
        if not isinstance(calls, list) or not all(isinstance(c, str) for c in calls):
            raise EnvoyConfigError(f"{here}.calls must be a list of service names")
        if len(set(calls)) != len(calls):
            raise EnvoyConfigError(f"{here}.calls names a service twice: {calls}")
        out[name] = {
            "package": package,
            "port": _check_port(f"{here}.port", spec["port"]),
            "mesh_port": _check_port(f"{here}.mesh_port", spec["mesh_port"], _LOWEST_PORT),
            "egress_port": (
                _check_port(f"{here}.egress_port", spec["egress_port"], _LOWEST_PORT)
                if spec.get("egress_port") is not None
                else None
            ),
            "calls": list(calls),
            "resilience": check_resilience(f"{here}.resilience", spec.get("resilience", {})),
        }
    for name, spec in out.items():
        for called in spec["calls"]:
            if called not in out:
                raise EnvoyConfigError(
                    f"{where}.{name}.calls names {called!r}, which is not a service of {where} "
                    f"(known: {', '.join(sorted(out)) or 'none'})"
                )
            if out[called]["egress_port"] is None:
                raise EnvoyConfigError(
                    f"{where}.{called}.egress_port is required: {name} calls {called}, and its "
                    "app reaches it through the local Envoy on 127.0.0.1:<egress_port>"
                )
    return out


def _check_unique_ports(services: dict, settings: dict) -> None:
    """Every port of the map and of Envoy itself used once, so no two listeners or apps can collide on a host."""
    seen: dict[int, str] = {}
    used = [(settings["metrics_port"], "envoy_metrics_port")]
    for name, spec in sorted(services.items()):
        for key in ("port", "mesh_port", "egress_port"):
            if spec[key] is not None:
                used.append((spec[key], f"sevenleague_services.{name}.{key}"))
    for port, where in used:
        if port in seen:
            raise EnvoyConfigError(
                f"port {port} is used twice, by {seen[port]} and by {where}: every port of "
                "sevenleague_services and envoy_metrics_port must differ"
            )
        seen[port] = where


def _check_settings(settings) -> dict:
    if not isinstance(settings, dict):
        raise EnvoyConfigError("the envoy settings must be a mapping")
    missing = sorted(SETTINGS_KEYS - set(settings))
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if missing or unknown:
        raise EnvoyConfigError(
            f"the envoy settings lack {', '.join(missing) or 'nothing'} and have unknown "
            f"{', '.join(unknown) or 'nothing'}"
        )
    out = dict(settings)
    admin = settings["admin_socket"]
    if not isinstance(admin, str) or not _PATH.match(admin) or len(admin.encode()) > _MAX_SOCKET_PATH:
        raise EnvoyConfigError(
            f"envoy_admin_socket must be an absolute path of at most {_MAX_SOCKET_PATH} bytes, not {admin!r}"
        )
    out["metrics_port"] = _check_port("envoy_metrics_port", settings["metrics_port"], _LOWEST_PORT)
    for key, lowest in (
        ("max_heap_bytes", 64 * 2**20),
        ("max_downstream_connections", 16),
        ("buffer_limit_bytes", 1024),
    ):
        if not _is_int(settings[key]) or not lowest <= settings[key] <= 2**63 - 1:
            raise EnvoyConfigError(f"envoy_{key} must be a whole number of at least {lowest}, not {settings[key]!r}")
    for key in ("xds_dir", "sds_dir", "pki_dir"):
        if not isinstance(settings[key], str) or not settings[key].startswith("/"):
            raise EnvoyConfigError(f"the envoy setting {key} must be an absolute path, not {settings[key]!r}")
    callers = settings["metrics_callers"]
    if not isinstance(callers, list) or not all(isinstance(h, str) and _HOST_NAME.match(h) for h in callers):
        raise EnvoyConfigError(
            f"the hosts allowed to scrape Envoy (envoy_metrics_allowed_groups) must be inventory "
            f"names usable as certificate names, not {callers!r}"
        )
    out["metrics_callers"] = sorted(set(callers))
    out["resilience"] = check_resilience(
        "the role's resilience defaults (envoy_*)", settings["resilience"], complete=True
    )
    return out


def _host_address(hosts: dict, name: str, why: str) -> str:
    value = hosts[name].get("ansible_host")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise EnvoyConfigError(
            f"{name} needs an IP address as ansible_host in the inventory ({why}), not {value!r}"
        ) from None


def check_hosts(hosts, services: dict) -> dict:
    """name -> {"ansible_host", "services"} with the services checked against the map."""
    if not isinstance(hosts, dict):
        raise EnvoyConfigError("the hosts must be a mapping of inventory name to its ansible_host and services")
    out = {}
    for name, spec in hosts.items():
        spec = spec or {}
        running = spec.get("services") or []
        if not isinstance(running, list) or not all(isinstance(s, str) for s in running):
            raise EnvoyConfigError(
                f"{name}: the host variable `services` must be a list of service names, not {running!r}"
            )
        unknown = [s for s in running if s not in services]
        if unknown:
            raise EnvoyConfigError(
                f"{name}: `services` names {', '.join(unknown)}, not in sevenleague_services "
                f"(known: {', '.join(sorted(services)) or 'none'})"
            )
        if running and not (isinstance(name, str) and _HOST_NAME.match(name)):
            raise EnvoyConfigError(
                f"{name!r} runs services, so its inventory name is its certificate's name and must be a DNS name"
            )
        out[name] = {"ansible_host": spec.get("ansible_host"), "services": sorted(set(running))}
    return out


def plan(services, hosts, host: str, settings) -> dict:
    """What the host's Envoy serves and calls, from the inventory; every check happens here."""
    settings = _check_settings(settings)
    services = check_services(services)
    _check_unique_ports(services, settings)
    hosts = check_hosts(hosts, services)
    if host not in hosts:
        raise EnvoyConfigError(f"{host} is not among the inventory's hosts")
    address = _host_address(hosts, host, "Envoy listens on it for other hosts and for Prometheus")
    runners = {name: sorted(h for h, spec in hosts.items() if name in spec["services"]) for name in services}
    local = hosts[host]["services"]
    inbound = []
    for name in local:
        # The inventory names of the hosts running a service that calls this one.
        callers = sorted({h for caller, spec in services.items() if name in spec["calls"] for h in runners[caller]})
        inbound.append(
            {
                "service": name,
                "port": services[name]["port"],
                "mesh_port": services[name]["mesh_port"],
                "callers": callers,
                "caller_addresses": [
                    _host_address(
                        hosts, h, f"{name} accepts calls from it, and the firewall opens the port to that address"
                    )
                    for h in callers
                ],
                "resilience": {**settings["resilience"], **services[name]["resilience"]},
            }
        )
    upstreams = []
    for called in sorted({c for name in local for c in services[name]["calls"]}):
        if not runners[called]:
            callers = ", ".join(n for n in local if called in services[n]["calls"])
            raise EnvoyConfigError(
                f"{callers} on {host} calls {called}, but no host runs {called}: add it to the "
                "`services` of the hosts that should run it"
            )
        upstreams.append(
            {
                "service": called,
                "egress_port": services[called]["egress_port"],
                "endpoints": [
                    {
                        "host": h,
                        "address": _host_address(hosts, h, f"it runs {called}, which {host} calls"),
                        "port": services[called]["mesh_port"],
                    }
                    for h in runners[called]
                ],
                "resilience": {**settings["resilience"], **services[called]["resilience"]},
            }
        )
    return {"host": host, "address": address, "settings": settings, "inbound": inbound, "upstreams": upstreams}


def rollout(services, hosts, service: str) -> dict:
    """Who runs `service` and whose Envoys call it, for a rolling deploy.

    Returns hosts (the inventory hosts running it, in inventory order), and callers: one entry
    per host whose Envoy balances over it, with the cluster name and the endpoint ("address:port")
    of every host running it, as that Envoy's /clusters names them.
    """
    services = check_services(services)
    hosts = check_hosts(hosts, services)
    if service not in services:
        raise EnvoyConfigError(
            f"{service} is not a service of sevenleague_services: one of {', '.join(sorted(services))}"
        )
    runners = [h for h, spec in hosts.items() if service in spec["services"]]
    calling = [name for name, spec in services.items() if service in spec["calls"]]
    callers = sorted({h for h, spec in hosts.items() if set(calling) & set(spec["services"])})
    port = services[service]["mesh_port"]
    endpoints = {h: f"{_host_address(hosts, h, f'it runs {service}')}:{port}" for h in runners}
    return {
        "service": service,
        "hosts": runners,
        "callers": callers,
        "cluster": f"upstream_{service}",
        "endpoints": endpoints,
    }
