#!/usr/bin/env python3
"""Bootstrap a bare Debian host of the inventory with pyinfra, so Ansible can manage it.

    .venv/bin/python bootstrap/bootstrap.py HOST [-i INVENTORY] [--login-user root]
                                                 [--login-key FILE] [--public-key FILE]

HOST is its inventory name. The address (ansible_host), the account Ansible logs in as
(ansible_user) and the key (ansible_ssh_private_key_file, whose .pub is installed) come from
the inventory, so the host ends up the way the inventory says Ansible reaches it. The first login
is `--login-user` (default root) with `--login-key` (default the same key): on a new machine, the
account and key its installer or cloud image set up. Known hosts come from the inventory's
UserKnownHostsFile when it names one, and the host key must already be there (no trust on first
use). Then run site.yml to converge it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def inventory_host(inventory: str | None, name: str) -> dict:
    args = [str(BIN / "ansible-inventory"), "--host", name]
    if inventory:
        args[1:1] = ["-i", inventory]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"bootstrap: {name} is not a host of the inventory: add it first "
            f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'ansible-inventory failed'})"
        )
    return json.loads(result.stdout)


def known_hosts_file(hostvars: dict) -> str | None:
    args = shlex.split(str(hostvars.get("ansible_ssh_common_args", "")))
    for i, arg in enumerate(args):
        value = (
            arg[2:]
            if arg.startswith("-o") and len(arg) > 2
            else (args[i + 1] if arg == "-o" and i + 1 < len(args) else "")
        )
        match = re.fullmatch(r"UserKnownHostsFile=(\S+)", value)
        if match:
            return match.group(1)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host", help="the host's inventory name")
    parser.add_argument("-i", "--inventory", help="inventory (default: ansible.cfg's)")
    parser.add_argument("--login-user", default="root", help="account of the first login (default root)")
    parser.add_argument("--login-key", help="private key of the first login (default: ansible_ssh_private_key_file)")
    parser.add_argument("--public-key", help="public key to authorize (default: ansible_ssh_private_key_file + .pub)")
    args = parser.parse_args()

    hostvars = inventory_host(args.inventory, args.host)
    address = hostvars.get("ansible_host", args.host)
    account = hostvars.get("ansible_user") or os.environ.get("USER", "root")
    private = hostvars.get("ansible_ssh_private_key_file")
    public = args.public_key or (f"{private}.pub" if private else None)
    if not public or not (ROOT / public).expanduser().is_file():
        sys.exit(
            f"bootstrap: no public key to authorize for {account}: pass --public-key, or set "
            f"ansible_ssh_private_key_file for {args.host} (its .pub is installed)"
        )
    command = [
        str(BIN / "pyinfra"),
        "--yes",
        "--ssh-user",
        args.login_user,
        address,
        str(ROOT / "bootstrap" / "deploy.py"),
        "--data",
        f"account={account}",
        "--data",
        f"authorized_key={(ROOT / public).expanduser().read_text().strip()}",
    ]
    login_key = args.login_key or private
    if login_key:
        command[2:2] = ["--ssh-key", str((ROOT / login_key).expanduser())]
    known = known_hosts_file(hostvars)
    if known:
        command += [
            "--data",
            f"ssh_known_hosts_file={(ROOT / known).expanduser()}",
            "--data",
            "ssh_strict_host_key_checking=yes",
        ]
    print(
        f"bootstrap: {args.host} ({address}): Python, sudo and {account}'s key, over SSH as {args.login_user}",
        flush=True,
    )
    return subprocess.call(command, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
