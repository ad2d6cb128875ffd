"""The names of a host's certificate, from the inventory alone.

One definition for everyone who needs them: the pki role asks for exactly
these names, and the openbao role lets each host's renewal role sign exactly
these names. Nothing a host reports (facts, module output) goes in: a host
that could choose its names could impersonate another.
"""

from __future__ import annotations

import datetime
import ipaddress

from ansible.errors import AnsibleFilterError


def pki_sans(inventory_hostname: str, ansible_host=None, allowed_networks=None, extra_sans=None) -> list[str]:
    """[inventory name, its IPv4 ansible_host when the CA may sign addresses, extras...], unique.

    The inventory name comes first: it becomes the CN. No short name: it lies
    outside every domain. The address is added only when allowed_networks is set;
    whether it lies inside them is the CA's check, which names the address.
    """
    if not isinstance(inventory_hostname, str) or not inventory_hostname:
        raise AnsibleFilterError(f"pki_sans: the inventory name {inventory_hostname!r} is not a name")
    names = [inventory_hostname]
    if allowed_networks and isinstance(ansible_host, str):
        try:
            address = ipaddress.ip_address(ansible_host)
        except ValueError:
            address = None
        if address is not None and address.version == 4:
            names.append(str(address))
    for name in extra_sans or []:
        if not isinstance(name, str) or not name.strip():
            raise AnsibleFilterError(f"pki_sans: {inventory_hostname}: extra SAN {name!r} is not a name")
        names.append(name.strip())
    unique = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique


def login_cidrs(inventory_hostname: str, ansible_host=None, sources=None) -> list[str]:
    """The networks a host's certificate login may come from: each address alone (/32, /128).

    A lone address is given bare, as OpenBao reads token_bound_cidrs back, so a rerun compares equal.
    From the inventory alone, like the names: the host's own sources when the inventory gives them
    (NAT, a second interface), else its ansible_host. A host without an address would get a login
    that works from anywhere, which is what this prevents: refuse it, naming the host.
    """
    given = list(sources or [])
    if not given:
        given = [ansible_host] if ansible_host else []
    if not given:
        raise AnsibleFilterError(
            f"{inventory_hostname} has no ansible_host: its certificate login would work from anywhere. "
            "Set its ansible_host to its address, or openbao_cert_auth_sources to the addresses it reaches OpenBao from"
        )
    networks = []
    for source in given:
        try:
            network = ipaddress.ip_network(str(source).strip(), strict=True)
        except ValueError:
            raise AnsibleFilterError(
                f"{inventory_hostname}: {source!r} is not an IP address; the certificate login is bound to the "
                "addresses in the inventory (ansible_host, or openbao_cert_auth_sources), never to a name"
            ) from None
        text = str(network.network_address) if network.num_addresses == 1 else str(network)
        if text not in networks:
            networks.append(text)
    return networks


def valid_serials_of(stored: list, common_names: list, now: datetime.datetime | None = None) -> list[str]:
    """The serials of the stored certificates, still valid and not revoked, whose CN is one of `common_names`.

    `stored` is a loop's results over the PKI mount's cert/<serial> reads: each {item: serial,
    current: {certificate, revocation_time}}.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    wanted = set(common_names or [])
    serials = []
    for entry in stored or []:
        current = entry.get("current") or {}
        pem = current.get("certificate") or ""
        if not pem or current.get("revocation_time"):
            continue
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as exc:
            raise AnsibleFilterError(f"stored certificate {entry.get('item')!r} does not parse: {exc}") from None
        names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names and names[0] in wanted and certificate.not_valid_after_utc > now:
            serials.append(entry["item"])
    return serials


class FilterModule:
    def filters(self):
        return {
            "sevenleague_pki_sans": pki_sans,
            "sevenleague_login_cidrs": login_cidrs,
            "sevenleague_valid_serials_of": valid_serials_of,
        }
