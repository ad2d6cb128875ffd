"""Envoy's configuration for one host, from the inventory's service map alone.

Plain functions on plain data, so the envoy role (through its filter) and pytest build exactly
the same configuration. The inventory is the control plane:

- the service map (`sevenleague_services`): per service its app's loopback `port`, its
  `mesh_port` (the inbound mutual-TLS listener on each host running it), its `egress_port`
  (the loopback listener its callers' apps use), the services it `calls`, and optional
  per-service `resilience` overrides;
- per host: `ansible_host` (an IP address) and `services`, the services it runs.

`envoy_config()` returns, for one host, the bootstrap (`/etc/envoy/envoy.yaml`), the listeners
(LDS file) and clusters (CDS file) as discovery responses, and a validation bootstrap with all of
them inlined, for `envoy --mode validate`. Identities are the pki role's host certificates: a
host is known by its inventory name, which is its certificate's CN and DNS SAN. Nothing a host
reports goes in: addresses and names come from the inventory.

Every inconsistency raises EnvoyConfigError naming the inventory key to change, before Envoy
ever sees the configuration.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
import subprocess
import tempfile

# Secrets the SDS files hold (written on the host by the role's sevenleague-envoy-secrets).
HOST_SECRET = "host"
CA_SECRET = "ca"
# The runtime layer (file-based RTDS, rtds.yaml in the xDS directory) that drains a service on
# this host: `sevenleague.drain.<service>: 100` makes its inbound listener answer callers' health
# checks with 503, so their Envoys stop sending it new requests (playbooks/deploy.yml).
RUNTIME_LAYER = "sevenleague_drain"
DRAIN_KEY = "sevenleague.drain.{service}"

# Mozilla's "intermediate" profile: TLS 1.2 and 1.3, ECDHE key exchange with AEAD ciphers only.
# These are the TLS 1.2 suites; BoringSSL's TLS 1.3 suites are all AEAD and not configurable.
CIPHER_SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
]

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
RETRY_ON = {"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
            "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
            "http3-post-connect-failure"}

SETTINGS_KEYS = {"admin_port", "metrics_port", "metrics_callers", "xds_dir", "sds_dir", "pki_dir",
                 "node_cluster", "max_heap_bytes", "max_downstream_connections", "buffer_limit_bytes",
                 "resilience"}
# The app role reads `version` and `config` of the same map.
SERVICE_KEYS = {"package", "port", "mesh_port", "egress_port", "calls", "resilience", "version", "config"}

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# An inventory name as it stands in a certificate's DNS SAN.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?)*$")
_PATH = re.compile(r"^/[A-Za-z0-9._~/%-]*$")
# Envoy runs as its own user with no capabilities: it cannot bind privileged ports.
_LOWEST_PORT = 1024
_MAX_UINT32 = 2**32 - 1


class EnvoyConfigError(Exception):
    """The inventory or the role's settings cannot make a working configuration; the message says what to change."""


def _type(name: str) -> str:
    return "type.googleapis.com/" + name


def _duration(ms: int) -> str:
    return f"{ms / 1000:g}s" if ms % 1000 else f"{ms // 1000}s"


# --- inputs ----------------------------------------------------------------------------------

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
        raise EnvoyConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                               f"use {', '.join(sorted(RESILIENCE_KEYS))}")
    missing = sorted(set(RESILIENCE_KEYS) - set(values)) if complete else []
    if missing:
        raise EnvoyConfigError(f"{where}: missing {', '.join(missing)}")
    for key, value in values.items():
        if RESILIENCE_KEYS[key] is int:
            lowest = _MINIMUM.get(key, 1)
            highest = 100 if key in _PERCENT else _MAX_UINT32
            if not _is_int(value) or not lowest <= value <= highest:
                raise EnvoyConfigError(f"{where}.{key} must be a whole number from {lowest} to {highest}, "
                                       f"not {value!r}")
        elif key == "retry_on":
            conditions = value.split(",") if isinstance(value, str) else []
            bad = [c for c in conditions if c not in RETRY_ON]
            if not conditions or bad:
                raise EnvoyConfigError(f"{where}.retry_on must be comma-separated conditions from "
                                       f"{', '.join(sorted(RETRY_ON))}, not {value!r}")
        elif key == "health_check_path":
            if not isinstance(value, str) or not _PATH.match(value):
                raise EnvoyConfigError(f"{where}.health_check_path must be an absolute URL path without a query, "
                                       f"not {value!r}")
    return dict(values)


def check_services(services) -> dict:
    """The service map with its defaults filled in, or EnvoyConfigError naming what to change."""
    where = "sevenleague_services"
    if not isinstance(services, dict):
        raise EnvoyConfigError(f"{where} must be a mapping of service name to its settings")
    out = {}
    for name, spec in services.items():
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            raise EnvoyConfigError(f"{where}: service name {name!r} must be lowercase letters, digits and _, starting "
                                   "with a letter (it names listeners, clusters and metrics)")
        here = f"{where}.{name}"
        if not isinstance(spec, dict):
            raise EnvoyConfigError(f"{here} must be a mapping (port, mesh_port, egress_port, calls)")
        unknown = sorted(set(spec) - SERVICE_KEYS)
        if unknown:
            raise EnvoyConfigError(f"{here}: unknown key(s) {', '.join(unknown)}; "
                                   f"use {', '.join(sorted(SERVICE_KEYS))}")
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
            "egress_port": (_check_port(f"{here}.egress_port", spec["egress_port"], _LOWEST_PORT)
                            if spec.get("egress_port") is not None else None),
            "calls": list(calls),
            "resilience": check_resilience(f"{here}.resilience", spec.get("resilience", {})),
        }
    for name, spec in out.items():
        for called in spec["calls"]:
            if called not in out:
                raise EnvoyConfigError(f"{where}.{name}.calls names {called!r}, which is not a service of {where} "
                                       f"(known: {', '.join(sorted(out)) or 'none'})")
            if out[called]["egress_port"] is None:
                raise EnvoyConfigError(f"{where}.{called}.egress_port is required: {name} calls {called}, and its "
                                       "app reaches it through the local Envoy on 127.0.0.1:<egress_port>")
    return out


def _check_unique_ports(services: dict, settings: dict) -> None:
    """Every port of the map and of Envoy itself used once, so no two listeners or apps can collide on a host."""
    seen: dict[int, str] = {}
    used = [(settings["admin_port"], "envoy_admin_port"), (settings["metrics_port"], "envoy_metrics_port")]
    for name, spec in sorted(services.items()):
        for key in ("port", "mesh_port", "egress_port"):
            if spec[key] is not None:
                used.append((spec[key], f"sevenleague_services.{name}.{key}"))
    for port, where in used:
        if port in seen:
            raise EnvoyConfigError(f"port {port} is used twice, by {seen[port]} and by {where}: every port of "
                                   "sevenleague_services, envoy_admin_port and envoy_metrics_port must differ")
        seen[port] = where


def _check_settings(settings) -> dict:
    if not isinstance(settings, dict):
        raise EnvoyConfigError("the envoy settings must be a mapping")
    missing = sorted(SETTINGS_KEYS - set(settings))
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if missing or unknown:
        raise EnvoyConfigError(f"the envoy settings lack {', '.join(missing) or 'nothing'} and have unknown "
                               f"{', '.join(unknown) or 'nothing'}")
    out = dict(settings)
    out["admin_port"] = _check_port("envoy_admin_port", settings["admin_port"], _LOWEST_PORT)
    out["metrics_port"] = _check_port("envoy_metrics_port", settings["metrics_port"], _LOWEST_PORT)
    for key, lowest in (("max_heap_bytes", 64 * 2**20), ("max_downstream_connections", 16),
                        ("buffer_limit_bytes", 1024)):
        if not _is_int(settings[key]) or not lowest <= settings[key] <= 2**63 - 1:
            raise EnvoyConfigError(f"envoy_{key} must be a whole number of at least {lowest}, not {settings[key]!r}")
    for key in ("xds_dir", "sds_dir", "pki_dir"):
        if not isinstance(settings[key], str) or not settings[key].startswith("/"):
            raise EnvoyConfigError(f"the envoy setting {key} must be an absolute path, not {settings[key]!r}")
    callers = settings["metrics_callers"]
    if not isinstance(callers, list) or not all(isinstance(h, str) and _HOST_NAME.match(h) for h in callers):
        raise EnvoyConfigError(f"the hosts allowed to scrape Envoy (envoy_metrics_allowed_groups) must be inventory "
                               f"names usable as certificate names, not {callers!r}")
    out["metrics_callers"] = sorted(set(callers))
    out["resilience"] = check_resilience("the role's resilience defaults (envoy_*)", settings["resilience"],
                                         complete=True)
    return out


def _host_address(hosts: dict, name: str, why: str) -> str:
    value = hosts[name].get("ansible_host")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise EnvoyConfigError(f"{name} needs an IP address as ansible_host in the inventory ({why}), not "
                               f"{value!r}") from None


def check_hosts(hosts, services: dict) -> dict:
    """name -> {"ansible_host", "services"} with the services checked against the map."""
    if not isinstance(hosts, dict):
        raise EnvoyConfigError("the hosts must be a mapping of inventory name to its ansible_host and services")
    out = {}
    for name, spec in hosts.items():
        spec = spec or {}
        running = spec.get("services") or []
        if not isinstance(running, list) or not all(isinstance(s, str) for s in running):
            raise EnvoyConfigError(f"{name}: the host variable `services` must be a list of service names, not "
                                   f"{running!r}")
        unknown = [s for s in running if s not in services]
        if unknown:
            raise EnvoyConfigError(f"{name}: `services` names {', '.join(unknown)}, not in sevenleague_services "
                                   f"(known: {', '.join(sorted(services)) or 'none'})")
        if running and not (isinstance(name, str) and _HOST_NAME.match(name)):
            raise EnvoyConfigError(f"{name!r} runs services, so its inventory name is its certificate's name and "
                                   "must be a DNS name")
        out[name] = {"ansible_host": spec.get("ansible_host"), "services": sorted(set(running))}
    return out


# --- building blocks ---------------------------------------------------------------------------

def _sds(name: str, settings: dict) -> dict:
    """A secret from its file, reloaded when a file is renamed into the directory."""
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": f"{settings['sds_dir']}/{name}.yaml",
                "watched_directory": {"path": settings["sds_dir"]},
            },
            "resource_api_version": "V3",
        },
    }


def _tls_params() -> dict:
    return {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3",
            "cipher_suites": list(CIPHER_SUITES)}


def _common_tls(settings: dict, alpn: list[str], peer_names: list[str] | None = None) -> dict:
    context = {
        "tls_params": _tls_params(),
        "tls_certificate_sds_secret_configs": [_sds(HOST_SECRET, settings)],
        "alpn_protocols": alpn,
    }
    if peer_names is None:
        context["validation_context_sds_secret_config"] = _sds(CA_SECRET, settings)
    else:
        # The trust bundle from its file, and the names this side accepts.
        context["combined_validation_context"] = {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": name}} for name in peer_names],
            },
            "validation_context_sds_secret_config": _sds(CA_SECRET, settings),
        }
    return context


def _downstream_tls(settings: dict) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _type("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
            "require_client_certificate": True,
            "common_tls_context": _common_tls(settings, ["h2", "http/1.1"]),
        },
    }


def _upstream_tls(settings: dict, peer_names: list[str], sni: str | None) -> dict:
    config = {
        "@type": _type("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
        "common_tls_context": _common_tls(settings, ["h2"], peer_names),
    }
    if sni:
        config["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": config}


def _access_log(listener: str, errors_only: bool = False) -> list[dict]:
    """One JSON object per request on stdout, so in the journal and at the log aggregator."""
    log = {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _type("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
            "log_format": {
                "json_format": {
                    "ts": "%START_TIME%",
                    "listener": listener,
                    "method": "%REQ(:METHOD)%",
                    # Without the query string, like the apps' own logs.
                    "path": "%PATH(NQ)%",
                    "protocol": "%PROTOCOL%",
                    "code": "%RESPONSE_CODE%",
                    "flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                    "peer": "%DOWNSTREAM_PEER_SUBJECT%",
                    "remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
                    "upstream": "%UPSTREAM_HOST%",
                    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                },
            },
        },
    }
    failed = {"status_code_filter": {"comparison": {"op": "GE", "value": {
        "default_value": 400 if errors_only else 500, "runtime_key": "sevenleague.log_min_status"}}}}
    # Scrapes and health checks come every few seconds: only their failures are logged.
    log["filter"] = failed if errors_only else {"or_filter": {"filters": [{"not_health_check_filter": {}}, failed]}}
    return [log]


def _rbac(callers: list[str]) -> dict:
    """Allow only certificates whose DNS SAN (or, without one, subject) names an allowed caller."""
    policies = {}
    if callers:
        policies["allowed-callers"] = {
            "permissions": [{"any": True}],
            "principals": [{"authenticated": {"principal_name": {"exact": name}}} for name in callers],
        }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": _type("envoy.extensions.filters.http.rbac.v3.RBAC"),
            # No policy: ALLOW with nothing allowed denies every request.
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


def _router() -> dict:
    return {"name": "envoy.filters.http.router",
            "typed_config": {"@type": _type("envoy.extensions.filters.http.router.v3.Router")}}


def _hcm(stat_prefix: str, route_config: dict, http_filters: list[dict], access_log: list[dict],
         inbound: bool) -> dict:
    config = {
        "@type": _type("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "common_http_protocol_options": {
            "idle_timeout": "3600s",
            # Envoy's edge recommendation: a header name with _ can smuggle past filters that read the - form.
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        "http2_protocol_options": {"max_concurrent_streams": 100, "initial_stream_window_size": 65536,
                                   "initial_connection_window_size": 1048576},
        "stream_idle_timeout": "300s",
        "request_headers_timeout": "10s",
        "access_log": access_log,
        "route_config": route_config,
        "http_filters": http_filters,
    }
    if inbound:
        config.update({
            # The peer is another host's Envoy: its address is the remote address, and its request id
            # is kept so both access logs carry the same one.
            "use_remote_address": True,
            "preserve_external_request_id": True,
            # The app learns which host called: x-forwarded-client-cert with the caller's name.
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"subject": True, "dns": True},
        })
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def _static_cluster(name: str, address: str, port: int, settings: dict, resilience: dict, http2: bool = False) -> dict:
    cluster = {
        "@type": _type("envoy.config.cluster.v3.Cluster"),
        "name": name,
        "type": "STATIC",
        "connect_timeout": _duration(resilience["connect_timeout_ms"]),
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}]}]},
    }
    if not http2:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
            # Below the apps' 30 s keep-alive, so Envoy never reuses a connection the app is closing.
            "common_http_protocol_options": {"idle_timeout": "20s"},
            "explicit_http_config": {"http_protocol_options": {}},
        }}
    return cluster


def _circuit_breakers(resilience: dict) -> dict:
    return {"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": resilience["max_connections"],
        "max_pending_requests": resilience["max_pending_requests"],
        "max_requests": resilience["max_requests"],
        "max_retries": resilience["max_retries"],
        # The budget replaces max_retries as the limit on concurrent retries; max_retries stays the floor.
        "retry_budget": {"budget_percent": {"value": float(resilience["retry_budget_percent"])},
                         "min_retry_concurrency": resilience["max_retries"]},
    }]}


def _version(resources: list[dict]) -> str:
    """A digest of the resources: Envoy reports it once it has applied them (version_text)."""
    return hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]


def _discovery(resources: list[dict]) -> dict:
    return {"version_info": _version(resources), "resources": resources}


# --- the configuration of one host -------------------------------------------------------------

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
        inbound.append({"service": name, "port": services[name]["port"], "mesh_port": services[name]["mesh_port"],
                        "callers": callers,
                        "caller_addresses": [_host_address(hosts, h, f"{name} accepts calls from it, and the "
                                                                     "firewall opens the port to that address")
                                             for h in callers],
                        "resilience": {**settings["resilience"], **services[name]["resilience"]}})
    upstreams = []
    for called in sorted({c for name in local for c in services[name]["calls"]}):
        if not runners[called]:
            callers = ", ".join(n for n in local if called in services[n]["calls"])
            raise EnvoyConfigError(f"{callers} on {host} calls {called}, but no host runs {called}: add it to the "
                                   "`services` of the hosts that should run it")
        upstreams.append({"service": called, "egress_port": services[called]["egress_port"],
                          "endpoints": [{"host": h, "address": _host_address(hosts, h, f"it runs {called}, which "
                                                                                       f"{host} calls"),
                                         "port": services[called]["mesh_port"]} for h in runners[called]],
                          "resilience": {**settings["resilience"], **services[called]["resilience"]}})
    return {"host": host, "address": address, "settings": settings, "inbound": inbound, "upstreams": upstreams}


def _inbound_listener(item: dict, p: dict) -> dict:
    settings, name, res = p["settings"], item["service"], item["resilience"]
    prefix = f"inbound_{name}"
    route_config = {"name": prefix, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [{
        # Drained (the runtime layer): callers' health checks fail, their other requests still pass.
        "match": {"path": res["health_check_path"], "runtime_fraction": {
            "default_value": {"numerator": 0, "denominator": "HUNDRED"},
            "runtime_key": DRAIN_KEY.format(service=name)}},
        "direct_response": {"status": 503, "body": {"inline_string": '{"status": "draining"}'}},
    }, {
        "match": {"prefix": "/"},
        "route": {
            "cluster": f"local_{name}",
            "timeout": _duration(res["request_timeout_ms"]),
            # Only what never reached the app is retried here; the caller's Envoy owns the other retries.
            "retry_policy": {"retry_on": "connect-failure,reset-before-request", "num_retries": 1},
        },
    }]}]}
    filters = [
        _rbac(item["callers"]),
        {"name": "envoy.filters.http.health_check", "typed_config": {
            "@type": _type("envoy.extensions.filters.http.health_check.v3.HealthCheck"),
            # The app answers its health checks, unless Envoy was told to fail them (/healthcheck/fail,
            # before a restart): then callers' health checks see 503 and move away first.
            "pass_through_mode": True,
            "headers": [{"name": ":path", "string_match": {"exact": res["health_check_path"]}}],
        }},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": _type("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
            "stat_prefix": f"{prefix}_ratelimit",
            "token_bucket": {"max_tokens": res["rate_limit_rps"], "tokens_per_fill": res["rate_limit_rps"],
                             "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": f"sevenleague.{prefix}.ratelimit_enabled",
                               "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": f"sevenleague.{prefix}.ratelimit_enforced",
                                "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        }},
        _router(),
    ]
    return {
        "@type": _type("envoy.config.listener.v3.Listener"),
        "name": prefix,
        "address": {"socket_address": {"address": p["address"], "port_value": item["mesh_port"]}},
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "filter_chains": [{
            "transport_socket": _downstream_tls(settings),
            "filters": [_hcm(prefix, route_config, filters, _access_log(prefix), inbound=True)],
        }],
    }


def _outbound_listener(item: dict, p: dict) -> dict:
    settings, name, res = p["settings"], item["service"], item["resilience"]
    prefix = f"outbound_{name}"
    route_config = {"name": prefix, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [{
        "match": {"prefix": "/"},
        "route": {
            "cluster": f"upstream_{name}",
            "timeout": _duration(res["request_timeout_ms"]),
            "retry_policy": {
                "retry_on": res["retry_on"],
                "num_retries": res["retries"],
                # A retry goes to another host when there is one.
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                    "@type": _type("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")}}],
                "host_selection_retry_max_attempts": 3,
            },
        },
    }]}]}
    return {
        "@type": _type("envoy.config.listener.v3.Listener"),
        "name": prefix,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": item["egress_port"]}},
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "filter_chains": [{"filters": [_hcm(prefix, route_config, [_router()], _access_log(prefix), inbound=False)]}],
    }


def _metrics_listener(p: dict) -> dict:
    settings = p["settings"]
    route_config = {"name": "metrics", "virtual_hosts": [{"name": "metrics", "domains": ["*"], "routes": [
        {"match": {"path": "/stats/prometheus", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
         "route": {"cluster": "admin", "timeout": "10s"}},
        # Nothing else of the admin interface is reachable from the network.
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]}]}
    return {
        "@type": _type("envoy.config.listener.v3.Listener"),
        "name": "metrics",
        "address": {"socket_address": {"address": p["address"], "port_value": settings["metrics_port"]}},
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "filter_chains": [{
            "transport_socket": _downstream_tls(settings),
            "filters": [_hcm("metrics", route_config, [_rbac(settings["metrics_callers"]), _router()],
                             _access_log("metrics", errors_only=True), inbound=True)],
        }],
    }


def _upstream_cluster(item: dict, p: dict) -> dict:
    settings, name, res = p["settings"], item["service"], item["resilience"]
    cluster_name = f"upstream_{name}"
    names = [e["host"] for e in item["endpoints"]]
    return {
        "@type": _type("envoy.config.cluster.v3.Cluster"),
        "name": cluster_name,
        "type": "STATIC",
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": _duration(res["connect_timeout_ms"]),
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        # From the inventory's address, which the callee's firewall and logs know this host by.
        "upstream_bind_config": {"source_address": {"address": p["address"], "port_value": 0}},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
            "common_http_protocol_options": {"idle_timeout": "3600s"},
            # Envoy to Envoy: HTTP/2, so many requests share one TLS connection.
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100}},
        }},
        "load_assignment": {"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": e["address"], "port_value": e["port"]}},
                         "hostname": e["host"]},
            "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"peer": e["host"]}}},
        } for e in item["endpoints"]]}]},
        # Each endpoint must present the certificate of the host the inventory puts at its address.
        "transport_socket_matches": [{"name": e["host"], "match": {"peer": e["host"]},
                                      "transport_socket": _upstream_tls(settings, [e["host"]], e["host"])}
                                     for e in item["endpoints"]],
        # Any host of the service; used only by an endpoint without a match above.
        "transport_socket": _upstream_tls(settings, names, None),
        "circuit_breakers": _circuit_breakers(res),
        "outlier_detection": {
            "consecutive_5xx": res["outlier_consecutive_5xx"],
            "interval": _duration(res["outlier_interval_ms"]),
            "base_ejection_time": _duration(res["outlier_base_ejection_ms"]),
            "max_ejection_percent": res["outlier_max_ejection_percent"],
        },
        "health_checks": [{
            "timeout": _duration(res["health_check_timeout_ms"]),
            "interval": _duration(res["health_check_interval_ms"]),
            # Idle clusters are checked as often: the first request after a quiet spell finds fresh state.
            "no_traffic_interval": _duration(res["health_check_interval_ms"]),
            "unhealthy_threshold": res["health_check_unhealthy_threshold"],
            "healthy_threshold": res["health_check_healthy_threshold"],
            "http_health_check": {"path": res["health_check_path"], "codec_client_type": "HTTP2"},
        }],
    }


def _local_cluster(item: dict, p: dict) -> dict:
    cluster = _static_cluster(f"local_{item['service']}", "127.0.0.1", item["port"], p["settings"], item["resilience"])
    cluster["circuit_breakers"] = _circuit_breakers(item["resilience"])
    # Its only retries re-send, once, what never reached the app on the loopback (a burst of refused
    # connections): no budget to hold them back below the requests themselves.
    limits = cluster["circuit_breakers"]["thresholds"][0]
    del limits["retry_budget"]
    limits["max_retries"] = item["resilience"]["max_requests"]
    return cluster


def _bootstrap(p: dict) -> dict:
    settings = p["settings"]
    xds = settings["xds_dir"]

    def path_source(kind: str) -> dict:
        return {"path_config_source": {"path": f"{xds}/{kind}.yaml", "watched_directory": {"path": xds}},
                "resource_api_version": "V3"}

    return {
        "node": {"id": p["host"], "cluster": settings["node_cluster"]},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": settings["admin_port"]}},
            # The certificate check of the pki hook and the drain before a restart must get through a flood.
            "ignore_global_conn_limit": True,
        },
        "dynamic_resources": {"lds_config": path_source("lds"), "cds_config": path_source("cds")},
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                {"name": "envoy.resource_monitors.fixed_heap", "typed_config": {
                    "@type": _type("envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"),
                    "max_heap_size_bytes": settings["max_heap_bytes"]}},
                {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
                    "@type": _type("envoy.extensions.resource_monitors.downstream_connections.v3."
                                   "DownstreamConnectionsConfig"),
                    "max_active_downstream_connections": settings["max_downstream_connections"]}},
            ],
            "actions": [
                {"name": "envoy.overload_actions.shrink_heap",
                 "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.95}}]},
                {"name": "envoy.overload_actions.stop_accepting_requests",
                 "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.98}}]},
            ],
        },
        # No admin layer, so /runtime_modify cannot change Envoy's behaviour; the drain layer is a
        # root-owned file in the watched directory.
        "layered_runtime": {"layers": [
            {"name": "static", "static_layer": {}},
            {"name": "drain", "rtds_layer": {"name": RUNTIME_LAYER, "rtds_config": path_source("rtds")}},
        ]},
        # The default tags become Prometheus labels, e.g. envoy_http_conn_manager_prefix="inbound_<service>".
        "stats_config": {"use_all_default_tags": True},
    }


def envoy_config(services, hosts, host: str, settings) -> dict:
    """The whole configuration of one host's Envoy, as plain data.

    services: the service map (sevenleague_services); hosts: inventory name -> {"ansible_host",
    "services"} for every host of the inventory; host: this host's inventory name; settings: the
    role's settings (SETTINGS_KEYS, with `resilience` holding every RESILIENCE_KEYS default).

    Returns bootstrap, lds and cds (the files Envoy reads), validation (all of it in one file for
    `envoy --mode validate`), egress (service -> the URL its callers' apps use on this host),
    firewall (rules for the common role's firewall_rules) and callers (service -> allowed hosts).
    """
    p = plan(services, hosts, host, settings)
    listeners = [_inbound_listener(item, p) for item in p["inbound"]]
    listeners += [_outbound_listener(item, p) for item in p["upstreams"]]
    listeners.append(_metrics_listener(p))
    clusters = [_local_cluster(item, p) for item in p["inbound"]]
    clusters += [_upstream_cluster(item, p) for item in p["upstreams"]]
    admin = _static_cluster("admin", "127.0.0.1", p["settings"]["admin_port"], p["settings"],
                            p["settings"]["resilience"])
    clusters.append(admin)
    config = {
        "bootstrap": _bootstrap(p),
        "lds": _discovery(listeners),
        "cds": _discovery(clusters),
        "egress": {u["service"]: f"http://127.0.0.1:{u['egress_port']}" for u in p["upstreams"]},
        "callers": {item["service"]: item["callers"] for item in p["inbound"]},
        "firewall": [{"name": f"envoy-{item['service']}", "port": item["mesh_port"],
                      "sources": sorted(set(item["caller_addresses"]))} for item in p["inbound"]
                     if item["caller_addresses"]],
    }
    config["validation"] = validation_bootstrap(config, p["settings"]["pki_dir"])
    return config


def runtime_document(drained) -> dict:
    """The drain layer's file (rtds.yaml): the services of this host that callers must avoid."""
    layer = {DRAIN_KEY.format(service=name): 100 for name in sorted(set(drained))}
    resource = {"@type": _type("envoy.service.runtime.v3.Runtime"), "name": RUNTIME_LAYER, "layer": layer}
    return {"version_info": _version([resource]), "resources": [resource]}


def rollout(services, hosts, service: str) -> dict:
    """Who runs `service` and whose Envoys call it, for a rolling deploy.

    Returns hosts (the inventory hosts running it, in inventory order), and callers: one entry
    per host whose Envoy balances over it, with the cluster name and the endpoint ("address:port")
    of every host running it, as that Envoy's /clusters names them.
    """
    services = check_services(services)
    hosts = check_hosts(hosts, services)
    if service not in services:
        raise EnvoyConfigError(f"{service} is not a service of sevenleague_services: one of "
                               f"{', '.join(sorted(services))}")
    runners = [h for h, spec in hosts.items() if service in spec["services"]]
    calling = [name for name, spec in services.items() if service in spec["calls"]]
    callers = sorted({h for h, spec in hosts.items() if set(calling) & set(spec["services"])})
    port = services[service]["mesh_port"]
    endpoints = {h: f"{_host_address(hosts, h, f'it runs {service}')}:{port}" for h in runners}
    return {"service": service, "hosts": runners, "callers": callers, "cluster": f"upstream_{service}",
            "endpoints": endpoints}


# --- validation --------------------------------------------------------------------------------

def _strip_sds(node):
    """The same structure with every SDS reference pointing at a static secret of the same name."""
    if isinstance(node, dict):
        if set(node) == {"name", "sds_config"} and node["name"] in (HOST_SECRET, CA_SECRET):
            return {"name": node["name"]}
        return {key: _strip_sds(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_strip_sds(value) for value in node]
    return node


def validation_bootstrap(config: dict, pki_dir: str) -> dict:
    """The bootstrap with the listeners and clusters inlined as static resources, for --mode validate.

    Validation mode does not read the xDS or SDS files, so everything they hold is checked here:
    the resources exactly as the LDS and CDS files carry them, and the secrets as static secrets
    loaded from the pki directory's files (fullchain.pem, key.pem, ca.pem), whose certificates
    and key Envoy must be able to load.
    """
    bootstrap = copy.deepcopy(config["bootstrap"])
    del bootstrap["dynamic_resources"]
    # The drain layer's file may not exist yet (the role writes it next to the others).
    bootstrap["layered_runtime"]["layers"] = [
        {"name": layer["name"], "static_layer": {}} if "rtds_layer" in layer else layer
        for layer in bootstrap["layered_runtime"]["layers"]]

    def plain(resources: list[dict]) -> list[dict]:
        return [{k: v for k, v in _strip_sds(r).items() if k != "@type"} for r in resources]

    bootstrap["static_resources"] = {
        "listeners": plain(config["lds"]["resources"]),
        "clusters": plain(config["cds"]["resources"]),
        "secrets": [
            {"name": HOST_SECRET, "tls_certificate": {"certificate_chain": {"filename": f"{pki_dir}/fullchain.pem"},
                                                      "private_key": {"filename": f"{pki_dir}/key.pem"}}},
            {"name": CA_SECRET, "validation_context": {"trusted_ca": {"filename": f"{pki_dir}/ca.pem"}}},
        ],
    }
    return bootstrap


def check_with_envoy(bootstrap: dict, envoy: str = "envoy", timeout: float = 120) -> None:
    """Run `envoy --mode validate` on a bootstrap; EnvoyConfigError with Envoy's reason when it refuses."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="envoy-validate-") as handle:
        json.dump(bootstrap, handle)
        handle.flush()
        result = subprocess.run([envoy, "--mode", "validate", "--log-level", "error", "-c", handle.name],
                                capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip().splitlines()
        reason = next((line.split("error initializing configuration", 1)[-1].split(": ", 1)[-1]
                       for line in output if "error initializing configuration" in line),
                      output[-1] if output else f"exit status {result.returncode}")
        raise EnvoyConfigError(f"Envoy refuses the configuration: {reason}")
