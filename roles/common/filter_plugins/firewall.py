"""Turn firewall rule declarations into nftables-ready data.

A rule, as roles and inventories declare it:

    name: node_exporter        # shows up as the nft comment
    port: 9100                 # an int, "8000-8100", or a list of those
    proto: tcp                 # tcp (default) or udp
    sources: [10.0.0.0/8]      # addresses or networks allowed in
    source_groups: [monitoring]  # inventory groups whose hosts are allowed in

A rule with neither sources nor source_groups is refused: opening a port to
the world must be written down as sources: [0.0.0.0/0, ::/0].
"""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError

_PORT_RANGE = re.compile(r"^(\d{1,5})-(\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _port(value, rule_name: str) -> str:
    """One port or range, checked and rendered the way nft wants it."""
    if isinstance(value, bool):
        raise AnsibleFilterError(f"firewall rule {rule_name!r}: port {value!r} is not a port number")
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        if not 1 <= number <= 65535:
            raise AnsibleFilterError(f"firewall rule {rule_name!r}: port {number} is outside 1-65535")
        return str(number)
    match = _PORT_RANGE.match(str(value))
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if 1 <= low < high <= 65535:
            return f"{low}-{high}"
    raise AnsibleFilterError(
        f"firewall rule {rule_name!r}: port {value!r} is neither a number nor a range like 8000-8100"
    )


def host_address(host: str, hostvars) -> str | None:
    """The address other hosts see for `host`: ansible_host when it is an
    address, else the default IPv4 address from its facts (gathered in this
    run, or cached), else None."""
    hvars = hostvars.get(host, {})
    candidate = hvars.get("ansible_host", host)
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    facts = hvars.get("ansible_facts") or {}
    address = (facts.get("default_ipv4") or {}).get("address")
    return address or None


def firewall_rules(rules, groups=None, hostvars=None):
    """Validate rule declarations and resolve source groups to addresses.

    Returns one dict per rule: name, proto, ports (list of str), ipv4 and
    ipv6 (lists of networks), sorted and de-duplicated so the rendered
    ruleset is stable from run to run.
    """
    groups = groups or {}
    hostvars = hostvars or {}
    if not isinstance(rules, list):
        raise AnsibleFilterError(f"firewall rules must be a list, got {type(rules).__name__}")
    out = []
    seen = set()
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise AnsibleFilterError(f"firewall rule #{index + 1} must be a mapping, got {rule!r}")
        name = str(rule.get("name", ""))
        if not _NAME.match(name):
            raise AnsibleFilterError(f"firewall rule #{index + 1}: name {name!r} must be 1-64 letters, digits or _.:-")
        if name in seen:
            raise AnsibleFilterError(f"firewall rule {name!r} is declared twice")
        seen.add(name)
        unknown = set(rule) - {"name", "port", "proto", "sources", "source_groups"}
        if unknown:
            raise AnsibleFilterError(
                f"firewall rule {name!r}: unknown keys {sorted(unknown)}; use name, port, proto, sources, source_groups"
            )
        proto = rule.get("proto", "tcp")
        if proto not in ("tcp", "udp"):
            raise AnsibleFilterError(f"firewall rule {name!r}: proto {proto!r} must be tcp or udp")
        if "port" not in rule:
            raise AnsibleFilterError(f"firewall rule {name!r} has no port")
        raw_ports = rule["port"] if isinstance(rule["port"], list) else [rule["port"]]
        ports = sorted({_port(p, name) for p in raw_ports}, key=lambda p: int(p.split("-")[0]))
        sources = rule.get("sources") or []
        source_groups = rule.get("source_groups") or []
        if isinstance(sources, str) or isinstance(source_groups, str):
            raise AnsibleFilterError(f"firewall rule {name!r}: sources and source_groups are lists, not strings")
        if not sources and not source_groups:
            raise AnsibleFilterError(
                f"firewall rule {name!r} names no sources: list sources or source_groups "
                f"(write sources: [0.0.0.0/0, '::/0'] to open it to everyone)"
            )
        networks = set()
        for source in sources:
            try:
                networks.add(ipaddress.ip_network(str(source), strict=False))
            except ValueError:
                raise AnsibleFilterError(
                    f"firewall rule {name!r}: source {source!r} is not an address or network"
                ) from None
        for group in source_groups:
            if group not in groups:
                raise AnsibleFilterError(f"firewall rule {name!r}: source group {group!r} is not an inventory group")
            # A host of the group with no known address (named by DNS in the inventory, down,
            # and never seen) is left out of its peers' allow-lists until it is converged: its
            # absence decides only its own traffic, and the others' rules still render.
            addresses = (host_address(host, hostvars) for host in groups[group])
            networks.update(ipaddress.ip_network(a) for a in addresses if a)
        out.append(
            {
                "name": name,
                "proto": proto,
                "ports": ports,
                "ipv4": [str(n) for n in sorted(n for n in networks if n.version == 4)],
                "ipv6": [str(n) for n in sorted(n for n in networks if n.version == 6)],
            }
        )
    return out


class FilterModule:
    def filters(self):
        return {"firewall_rules": firewall_rules}
