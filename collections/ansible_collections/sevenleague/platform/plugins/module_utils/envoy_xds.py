"""The pieces of Envoy's xDS resources the mesh is built from: TLS contexts through SDS, the RBAC
filter that admits only a service's callers, access logs, the HTTP connection manager, clusters' limits.

envoy_render assembles them into one host's listeners, clusters and bootstrap.
"""

from __future__ import annotations

from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_validate import (
    CA_SECRET,
    HOST_SECRET,
)

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


def _type(name: str) -> str:
    return "type.googleapis.com/" + name


def _duration(ms: int) -> str:
    return f"{ms / 1000:g}s" if ms % 1000 else f"{ms // 1000}s"


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
    return {
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_3",
        "cipher_suites": list(CIPHER_SUITES),
    }


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
                    {"san_type": "DNS", "matcher": {"exact": name}} for name in peer_names
                ],
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
    failed = {
        "status_code_filter": {
            "comparison": {
                "op": "GE",
                "value": {"default_value": 400 if errors_only else 500, "runtime_key": "sevenleague.log_min_status"},
            }
        }
    }
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
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _type("envoy.extensions.filters.http.router.v3.Router")},
    }


def _hcm(stat_prefix: str, route_config: dict, http_filters: list[dict], access_log: list[dict], inbound: bool) -> dict:
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
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "stream_idle_timeout": "300s",
        "request_headers_timeout": "10s",
        "access_log": access_log,
        "route_config": route_config,
        "http_filters": http_filters,
    }
    if inbound:
        config.update(
            {
                # The peer is another host's Envoy: its address is the remote address, and its request id
                # is kept so both access logs carry the same one.
                "use_remote_address": True,
                "preserve_external_request_id": True,
                # The app learns which host called: x-forwarded-client-cert with the caller's name.
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"subject": True, "dns": True},
            }
        )
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def _static_cluster(name: str, address: dict, settings: dict, resilience: dict, http2: bool = False) -> dict:
    """One endpoint at `address`, an Envoy address: a socket_address or a pipe."""
    cluster = {
        "@type": _type("envoy.config.cluster.v3.Cluster"),
        "name": name,
        "type": "STATIC",
        "connect_timeout": _duration(resilience["connect_timeout_ms"]),
        "per_connection_buffer_limit_bytes": settings["buffer_limit_bytes"],
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if not http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                # Below the apps' 30 s keep-alive, so Envoy never reuses a connection the app is closing.
                "common_http_protocol_options": {"idle_timeout": "20s"},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return cluster


def _circuit_breakers(resilience: dict) -> dict:
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": resilience["max_connections"],
                "max_pending_requests": resilience["max_pending_requests"],
                "max_requests": resilience["max_requests"],
                "max_retries": resilience["max_retries"],
                # The budget replaces max_retries as the limit on concurrent retries; max_retries stays the floor.
                "retry_budget": {
                    "budget_percent": {"value": float(resilience["retry_budget_percent"])},
                    "min_retry_concurrency": resilience["max_retries"],
                },
            }
        ]
    }
