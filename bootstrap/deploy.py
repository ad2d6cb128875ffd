"""pyinfra deploy: make a bare Debian host manageable by Ansible, and nothing more.

Installs python3 and python3-apt (what Ansible and its apt module need) and sudo, creates the
automation account with its SSH key and passwordless sudo (for root, only the key). pyinfra needs
only a shell on the host, so this works where Ansible cannot yet. Run it through
bootstrap/bootstrap.py, which reads the account, the address and the key from the inventory:

    .venv/bin/python bootstrap/bootstrap.py app3.sevenleague.test

Data it takes (`--data key=value`): account, authorized_key (the public key's line).
"""

from __future__ import annotations

import re
from io import StringIO

from pyinfra import host
from pyinfra.operations import apt, files, server

ACCOUNT = str(host.data.get("account") or "")
KEY = str(host.data.get("authorized_key") or "").strip()
if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", ACCOUNT):
    raise ValueError(f"account {ACCOUNT!r} is not a Debian user name: set ansible_user in the inventory")
if not re.fullmatch(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) \S+( .*)?", KEY):
    raise ValueError("authorized_key is not an OpenSSH public key line")

apt.packages(
    name="Install Python for Ansible (python3, python3-apt) and sudo",
    packages=["python3", "python3-apt", "sudo"],
    update=True,
    cache_time=3600,
    no_recommends=True,
)

if ACCOUNT == "root":
    server.user_authorized_keys(
        name="Authorize the automation key for root",
        user="root",
        public_keys=[KEY],
        delete_keys=False,
    )
else:
    server.user(
        name=f"Create the automation account {ACCOUNT} with its key",
        user=ACCOUNT,
        shell="/bin/bash",
        create_home=True,
        public_keys=[KEY],
        delete_keys=False,
    )
    # The account name was checked above, so the line is valid sudoers syntax.
    files.put(
        name=f"Let {ACCOUNT} use sudo without a password",
        src=StringIO(
            f"# Written by the sevenleague bootstrap: Ansible's account.\n{ACCOUNT} ALL=(ALL:ALL) NOPASSWD: ALL\n"
        ),
        dest=f"/etc/sudoers.d/90-sevenleague-{ACCOUNT}",
        user="root",
        group="root",
        mode="0440",
    )
