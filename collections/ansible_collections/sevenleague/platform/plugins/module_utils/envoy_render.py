"""Envoy's configuration of one host, rendered from the plan of envoy_servicemap with the pieces of envoy_xds.

Plain functions on plain data, so the envoy role (through its filter) and pytest build exactly
the same configuration. `envoy_config()` returns the bootstrap (`/etc/envoy/envoy.yaml`), the
listeners (LDS file) and clusters (CDS file) as discovery responses, and a validation bootstrap
with all of them inlined, for `envoy --mode validate` (envoy_validate). Identities are the pki
role's host certificates: a host is known by its inventory name, which is its certificate's CN
and DNS SAN.
"""

from __future__ import annotations

import hashlib
import json

from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_servicemap import plan
from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_validate import (
    validation_bootstrap,
)
from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_xds import (
    DRAIN_KEY,
    RUNTIME_LAYER,
    _access_log,
    _circuit_breakers,
    _downstream_tls,
    _duration,
    _hcm,
    _rbac,
    _router,
    _static_cluster,
    _type,
    _upstream_tls,
)


def _version(resources: list[dict]) -> str:
    """A digest of the resources: Envoy reports it once it has applied them (version_text)."""
    return hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]


def _discovery(resources: list[dict]) -> dict:
    return {"version_info": _version(resources), "resources": resources}


def _inbound_listener(item: dict, p: dict) -> dict:
    settings, name, res = p["settings"], item["service"], item["resilience"]
    prefix = f"inbound_{name}"
    route_config = {
        "name": prefix,
        "virtual_hosts": [
            {
                "name": name,
                "domains": ["*"],
                "routes": [
                    {
                        # Drained (the runtime layer): callers' health checks fail, their other requests still pass.
                        "match": {
                            "path": res["health_check_path"],
                            "runtime_fraction": {
                                "default_value": {"numerator": 0, "denominator": "HUNDRED"},
                                "runtime_key": DRAIN_KEY.format(service=name),
                            },
                        },
                        "direct_response": {"status": 503, "body": {"inline_string": '{"status": "draining"}'}},
                    },
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": f"local_{name}",
                            "timeout": _duration(res["request_timeout_ms"]),
                            # Only what never reached the app is retried here; the caller's Envoy owns the other retries.
                            "retry_policy": {"retry_on": "connect-failure,reset-before-request", "num_retries": 1},
                        },
                    },
                ],
            }
        ],
    }
    filters = [
        _rbac(item["callers"]),
        {
            "name": "envoy.filters.http.health_check",
            "typed_config": {
                "@type": _type("envoy.extensions.filters.http.health_check.v3.HealthCheck"),
                # The app answers its health checks, unless Envoy was told to fail them (/healthcheck/fail,
                # before a restart): then callers' health checks see 503 and move away first.
                "pass_through_mode": True,
                "headers": [{"name": ":path", "string_match": {"exact": res["health_check_path"]}}],
            },
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": _type("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
                "stat_prefix": f"{prefix}_ratelimit",
                "token_bucket": {
                    "max_tokens": res["rate_limit_rps"],
                    "tokens_per_fill": res["rate_limit_rps"],
                    "fill_interval": "1s",
                },
                "filter_enabled": {
                    "runtime_key": f"sevenleague.{prefix}.ratelimit_enabled",
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                },
                "filter_enforced": {
                    "runtime_key": f"sevenleague.{prefix}.ratelimit_enforced",
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                },
            },
        },
        _router(),
    ]
    return {
        "@type": _type("envoy.config.listener.v3.Listener"),
        "name": prefix,
        "address": {"socket_address": {"address": p["address"], "port_value": item["mesh_port"]}},
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "filter_chains": [
            {
                "transport_socket": _downstream_tls(settings),
                "filters": [_hcm(prefix, route_config, filters, _access_log(prefix), inbound=True)],
            }
        ],
    }


def _outbound_listener(item: dict, p: dict) -> dict:
    settings, name, res = p["settings"], item["service"], item["resilience"]
    prefix = f"outbound_{name}"
    route_config = {
        "name": prefix,
        "virtual_hosts": [
            {
                "name": name,
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": f"upstream_{name}",
                            "timeout": _duration(res["request_timeout_ms"]),
                            "retry_policy": {
                                "retry_on": res["retry_on"],
                                "num_retries": res["retries"],
                                # A retry goes to another host when there is one.
                                "retry_host_predicate": [
                                    {
                                        "name": "envoy.retry_host_predicates.previous_hosts",
                                        "typed_config": {
                                            "@type": _type(
                                                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                                            )
                                        },
                                    }
                                ],
                                "host_selection_retry_max_attempts": 3,
                            },
                        },
                    }
                ],
            }
        ],
    }
    return {
        "@type": _type("envoy.config.listener.v3.Listener"),
        "name": prefix,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": item["egress_port"]}},
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "filter_chains": [{"filters": [_hcm(prefix, route_config, [_router()], _access_log(prefix), inbound=False)]}],
    }


def _metrics_listener(p: dict) -> dict:
    settings = p["settings"]
    route_config = {
        "name": "metrics",
        "virtual_hosts": [
            {
                "name": "metrics",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {
                            "path": "/stats/prometheus",
                            "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                        },
                        "route": {"cluster": "admin", "timeout": "10s"},
                    },
                    # Nothing else of the admin interface is reachable from the network.
                    {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                ],
            }
        ],
    }
    return {
        "@type": _type("envoy.config.listener.v3.Listener"),
        "name": "metrics",
        "address": {"socket_address": {"address": p["address"], "port_value": settings["metrics_port"]}},
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "filter_chains": [
            {
                "transport_socket": _downstream_tls(settings),
                "filters": [
                    _hcm(
                        "metrics",
                        route_config,
                        [_rbac(settings["metrics_callers"]), _router()],
                        _access_log("metrics", errors_only=True),
                        inbound=True,
                    )
                ],
            }
        ],
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
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                "common_http_protocol_options": {"idle_timeout": "3600s"},
                # Envoy to Envoy: HTTP/2, so many requests share one TLS connection.
                "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100}},
            }
        },
        "load_assignment": {
            "cluster_name": cluster_name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": e["address"], "port_value": e["port"]}},
                                "hostname": e["host"],
                            },
                            "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"peer": e["host"]}}},
                        }
                        for e in item["endpoints"]
                    ]
                }
            ],
        },
        # Each endpoint must present the certificate of the host the inventory puts at its address.
        "transport_socket_matches": [
            {
                "name": e["host"],
                "match": {"peer": e["host"]},
                "transport_socket": _upstream_tls(settings, [e["host"]], e["host"]),
            }
            for e in item["endpoints"]
        ],
        # Any host of the service; used only by an endpoint without a match above.
        "transport_socket": _upstream_tls(settings, names, None),
        "circuit_breakers": _circuit_breakers(res),
        "outlier_detection": {
            "consecutive_5xx": res["outlier_consecutive_5xx"],
            "interval": _duration(res["outlier_interval_ms"]),
            "base_ejection_time": _duration(res["outlier_base_ejection_ms"]),
            "max_ejection_percent": res["outlier_max_ejection_percent"],
        },
        "health_checks": [
            {
                "timeout": _duration(res["health_check_timeout_ms"]),
                "interval": _duration(res["health_check_interval_ms"]),
                # Idle clusters are checked as often: the first request after a quiet spell finds fresh state.
                "no_traffic_interval": _duration(res["health_check_interval_ms"]),
                "unhealthy_threshold": res["health_check_unhealthy_threshold"],
                "healthy_threshold": res["health_check_healthy_threshold"],
                "http_health_check": {"path": res["health_check_path"], "codec_client_type": "HTTP2"},
            }
        ],
    }


def _local_cluster(item: dict, p: dict) -> dict:
    app = {"socket_address": {"address": "127.0.0.1", "port_value": item["port"]}}
    cluster = _static_cluster(f"local_{item['service']}", app, p["settings"], item["resilience"])
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
        return {
            "path_config_source": {"path": f"{xds}/{kind}.yaml", "watched_directory": {"path": xds}},
            "resource_api_version": "V3",
        }

    return {
        "node": {"id": p["host"], "cluster": settings["node_cluster"]},
        "admin": {
            # A unix socket only root (and Envoy) can open: the admin interface can drain and stop Envoy.
            "address": {"pipe": {"path": settings["admin_socket"], "mode": 0o600}},
            # The certificate check of the pki hook and the drain before a restart must get through a flood.
            "ignore_global_conn_limit": True,
        },
        "dynamic_resources": {"lds_config": path_source("lds"), "cds_config": path_source("cds")},
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.fixed_heap",
                    "typed_config": {
                        "@type": _type("envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"),
                        "max_heap_size_bytes": settings["max_heap_bytes"],
                    },
                },
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _type(
                            "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
                        ),
                        "max_active_downstream_connections": settings["max_downstream_connections"],
                    },
                },
            ],
            "actions": [
                {
                    "name": "envoy.overload_actions.shrink_heap",
                    "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.95}}],
                },
                {
                    "name": "envoy.overload_actions.stop_accepting_requests",
                    "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.98}}],
                },
            ],
        },
        # No admin layer, so /runtime_modify cannot change Envoy's behaviour; the drain layer is a
        # root-owned file in the watched directory.
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {"name": "drain", "rtds_layer": {"name": RUNTIME_LAYER, "rtds_config": path_source("rtds")}},
            ]
        },
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
    # The metrics listener's way to /stats/prometheus: Envoy's own admin socket.
    # The metrics listener reaches /stats/prometheus through Envoy's own admin socket.
    admin = {"pipe": {"path": p["settings"]["admin_socket"]}}
    clusters.append(_static_cluster("admin", admin, p["settings"], p["settings"]["resilience"]))
    config = {
        "bootstrap": _bootstrap(p),
        "lds": _discovery(listeners),
        "cds": _discovery(clusters),
        "egress": {u["service"]: f"http://127.0.0.1:{u['egress_port']}" for u in p["upstreams"]},
        "callers": {item["service"]: item["callers"] for item in p["inbound"]},
        "firewall": [
            {
                "name": f"envoy-{item['service']}",
                "port": item["mesh_port"],
                "sources": sorted(set(item["caller_addresses"])),
            }
            for item in p["inbound"]
            if item["caller_addresses"]
        ],
    }
    config["validation"] = validation_bootstrap(config, p["settings"]["pki_dir"])
    return config


def runtime_document(drained) -> dict:
    """The drain layer's file (rtds.yaml): the services of this host that callers must avoid."""
    layer = {DRAIN_KEY.format(service=name): 100 for name in sorted(set(drained))}
    resource = {"@type": _type("envoy.service.runtime.v3.Runtime"), "name": RUNTIME_LAYER, "layer": layer}
    return {"version_info": _version([resource]), "resources": [resource]}
