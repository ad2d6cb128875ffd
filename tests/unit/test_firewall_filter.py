"""The firewall rule filter: what a role or inventory may declare, and how
source groups become addresses."""

import pytest
from ansible.errors import AnsibleFilterError
from firewall import firewall_rules, host_address

GROUPS = {"monitoring": ["mon1", "mon2"], "apps": ["app1"], "empty": []}
HOSTVARS = {
    "mon1": {"ansible_host": "10.0.0.14"},
    # Named by DNS in the inventory: the address comes from its cached facts.
    "mon2": {"ansible_host": "mon2.example.internal", "ansible_facts": {"default_ipv4": {"address": "10.0.0.15"}}},
    "app1": {"ansible_host": "fd00::21"},
}


def test_source_groups_resolve_to_host_addresses():
    [rule] = firewall_rules(
        [{"name": "node_exporter", "port": 9100, "source_groups": ["monitoring"]}], GROUPS, HOSTVARS
    )
    assert rule == {
        "name": "node_exporter",
        "proto": "tcp",
        "ports": ["9100"],
        "ipv4": ["10.0.0.14/32", "10.0.0.15/32"],
        "ipv6": [],
    }


def test_ipv6_hosts_and_networks_are_kept_apart():
    [rule] = firewall_rules(
        [
            {
                "name": "api",
                "port": "8000-8100",
                "proto": "udp",
                "sources": ["192.168.1.0/24", "::/0"],
                "source_groups": ["apps"],
            }
        ],
        GROUPS,
        HOSTVARS,
    )
    assert rule["ports"] == ["8000-8100"]
    assert rule["proto"] == "udp"
    assert rule["ipv4"] == ["192.168.1.0/24"]
    assert rule["ipv6"] == ["::/0", "fd00::21/128"]


def test_output_is_sorted_and_deduplicated_so_reruns_render_the_same_file():
    rules = [{"name": "web", "port": [443, 80, "443"], "sources": ["10.0.0.2", "10.0.0.1", "10.0.0.2/32"]}]
    [rule] = firewall_rules(rules, GROUPS, HOSTVARS)
    assert rule["ports"] == ["80", "443"]
    assert rule["ipv4"] == ["10.0.0.1/32", "10.0.0.2/32"]


def test_host_bits_in_a_network_are_forgiven():
    [rule] = firewall_rules([{"name": "lan", "port": 22, "sources": ["10.1.2.3/24"]}])
    assert rule["ipv4"] == ["10.1.2.0/24"]


def test_an_empty_group_opens_nothing():
    [rule] = firewall_rules([{"name": "later", "port": 9090, "source_groups": ["empty"]}], GROUPS, HOSTVARS)
    assert rule["ipv4"] == [] and rule["ipv6"] == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "x", "port": 0, "sources": ["10.0.0.1"]}, "outside 1-65535"),
        ({"name": "x", "port": 70000, "sources": ["10.0.0.1"]}, "outside 1-65535"),
        ({"name": "x", "port": "100-10", "sources": ["10.0.0.1"]}, "neither a number nor a range"),
        ({"name": "x", "port": "http", "sources": ["10.0.0.1"]}, "neither a number nor a range"),
        ({"name": "x", "port": True, "sources": ["10.0.0.1"]}, "not a port number"),
        ({"name": "x", "sources": ["10.0.0.1"]}, "has no port"),
        ({"name": "x", "port": 80}, "names no sources"),
        ({"name": "x", "port": 80, "sources": "10.0.0.1"}, "lists, not strings"),
        ({"name": "x", "port": 80, "sources": ["10.0.0.300"]}, "not an address or network"),
        ({"name": "x", "port": 80, "source_groups": ["monitring"]}, "'monitring' is not an inventory group"),
        ({"name": "x", "port": 80, "proto": "icmp", "sources": ["10.0.0.1"]}, "must be tcp or udp"),
        ({"name": "x y", "port": 80, "sources": ["10.0.0.1"]}, "must be 1-64 letters"),
        ({"name": "x", "port": 80, "source": ["10.0.0.1"]}, "unknown keys ['source']"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rule, message):
    with pytest.raises(AnsibleFilterError, match=None) as err:
        firewall_rules([rule], GROUPS, HOSTVARS)
    assert message in str(err.value)


def test_a_rule_name_used_twice_is_refused():
    rule = {"name": "dup", "port": 80, "sources": ["10.0.0.1"]}
    with pytest.raises(AnsibleFilterError, match="declared twice"):
        firewall_rules([rule, dict(rule, port=81)])


def test_rules_must_be_a_list():
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        firewall_rules({"name": "x"})


# A host reports its own facts: a compromised or misconfigured host could claim any address and
# have its peers open their ports to it. An IP address in the inventory always wins.
REPORTS_ANOTHER_ADDRESS = {"ansible_facts": {"default_ipv4": {"address": "203.0.113.66"}}}


@pytest.mark.parametrize(
    ("host", "hvars", "address"),
    [
        ("app1", {"ansible_host": "10.0.0.21", **REPORTS_ANOTHER_ADDRESS}, "10.0.0.21"),
        ("app1", {"ansible_host": "fd00::21", **REPORTS_ANOTHER_ADDRESS}, "fd00::21"),
        # No ansible_host: an inventory name that is an address is the address.
        ("10.0.0.22", dict(REPORTS_ANOTHER_ADDRESS), "10.0.0.22"),
    ],
)
def test_an_address_in_the_inventory_outranks_the_one_the_host_reports(host, hvars, address):
    assert host_address(host, {host: hvars}) == address
    [rule] = firewall_rules([{"name": "app", "port": 8443, "source_groups": ["apps"]}], {"apps": [host]}, {host: hvars})
    assert rule["ipv4"] + rule["ipv6"] == [f"{address}/{32 if '.' in address else 128}"]


def test_a_host_without_address_or_facts_stays_out_and_its_peers_rules_still_render():
    """A host named by DNS, down and never seen: only its own traffic is refused."""
    hostvars = {"db1": {"ansible_host": "db1.example.internal"}, "db2": {"ansible_host": "10.0.0.32"}}
    assert host_address("db1", hostvars) is None
    [rule] = firewall_rules([{"name": "db", "port": 5432, "source_groups": ["db"]}], {"db": ["db1", "db2"]}, hostvars)
    assert rule["ipv4"] == ["10.0.0.32/32"]


@pytest.mark.parametrize(
    ("port", "rendered"),
    [(1, "1"), (65535, "65535"), ("1-2", "1-2"), ("65534-65535", "65534-65535"), ("1-65535", "1-65535")],
)
def test_the_first_and_last_ports_are_accepted(port, rendered):
    [rule] = firewall_rules([{"name": "edge", "port": port, "sources": ["10.0.0.1"]}])
    assert rule["ports"] == [rendered]


@pytest.mark.parametrize("port", [0, 65536, "0-10", "10-65536", "10-10"])
def test_ports_outside_1_65535_and_empty_ranges_are_refused(port):
    with pytest.raises(AnsibleFilterError, match="firewall rule 'edge': port"):
        firewall_rules([{"name": "edge", "port": port, "sources": ["10.0.0.1"]}])


def test_a_rule_without_a_name_is_refused():
    with pytest.raises(AnsibleFilterError, match="firewall rule #1: name '' must be"):
        firewall_rules([{"port": 80, "sources": ["10.0.0.1"]}])


def test_a_bad_rule_is_named_by_its_place_in_the_list():
    good = {"name": "ok", "port": 80, "sources": ["10.0.0.1"]}
    with pytest.raises(AnsibleFilterError, match=r"^firewall rule #2 must be a mapping, got 'ssh'$"):
        firewall_rules([good, "ssh"])
    with pytest.raises(AnsibleFilterError, match=r"^firewall rule #3: name 'a b' must be"):
        firewall_rules([good, dict(good, name="ok2"), dict(good, name="a b")])
    with pytest.raises(AnsibleFilterError, match=r"^firewall rules must be a list, got dict$"):
        firewall_rules({"name": "x"})


def test_a_host_the_inventory_names_by_address_needs_no_hostvars():
    assert host_address("10.0.0.9", {}) == "10.0.0.9"
