"""The names of a host's certificate, from the inventory alone.

One definition for everyone who needs them: the pki role asks for exactly
these names, and the openbao role lets each host's renewal role sign exactly
these names. Nothing a host reports (facts, module output) goes in: a host
that could choose its names could impersonate another.
"""

from __future__ import annotations

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


class FilterModule:
    def filters(self):
        return {"sevenleague_pki_sans": pki_sans}
