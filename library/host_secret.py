#!/usr/bin/python
"""A random secret made on the host that uses it, and optionally its bcrypt hash for an exporter-toolkit web config."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_secret
short_description: Make a random secret on the host, once, and give its bcrypt hash
description:
  - "Writes a random secret (43 URL-safe characters, 256 bits) to O(path) when the file is missing or
    empty, and sets its owner, group and mode. The secret is made on the managed host and never
    returned, so it never reaches the controller or the log; services on the host read the file."
  - "With O(web_user), also returns RV(bcrypt_hash) for exporter-toolkit's C(basic_auth_users):
    the hash O(web_config) already holds for that user while it still matches the secret (a
    second run changes nothing), else a new one."
  - The hash needs the C(bcrypt) Python library on the host (Debian's C(python3-bcrypt)).
options:
  path:
    description: The file holding the secret.
    type: path
    required: true
  owner:
    description: Owner of O(path).
    type: str
    default: root
  group:
    description: Group of O(path), the one service account that may read it.
    type: str
    default: root
  mode:
    description: Mode of O(path), octal.
    type: str
    default: "0600"
  web_user:
    description: The C(basic_auth_users) name to give a hash for; none when empty.
    type: str
    default: ""
  web_config:
    description: The exporter-toolkit web configuration (JSON) whose hash for O(web_user) is kept while it matches.
    type: path
    default: ""
notes:
  - Supports check mode; a secret that would be made gets a hash of a throwaway one, and an empty
    hash when the host has no C(bcrypt) yet.
author: sevenleague
"""

EXAMPLES = r"""
- name: Make the password Prometheus and root use with Alertmanager
  host_secret:
    path: /etc/prometheus/alertmanager.password
    group: prometheus
    mode: "0640"
    web_user: prometheus
    web_config: /etc/prometheus/alertmanager-web.yml
  register: __password
"""

RETURN = r"""
bcrypt_hash:
  description: A bcrypt hash of the secret, for C(basic_auth_users) of O(web_user).
  returned: when O(web_user) is set
  type: str
created:
  description: Whether the secret was made in this run.
  returned: always
  type: bool
"""

import json
import os
import secrets

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "mode": {"type": "str", "default": "0600"},
    "web_user": {"type": "str", "default": ""},
    "web_config": {"type": "path", "default": ""},
}


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def current_hash(web_config_text: str, user: str) -> str:
    """The hash a JSON web configuration holds for `user`, or "" when it holds none."""
    try:
        config = json.loads(web_config_text)
    except ValueError:
        return ""
    users = config.get("basic_auth_users") if isinstance(config, dict) else None
    value = users.get(user) if isinstance(users, dict) else None
    return value if isinstance(value, str) else ""


def hash_for(secret: str, kept: str, bcrypt) -> str:
    """`kept` while it is a bcrypt hash of `secret`, else a new hash of it."""
    if kept:
        try:
            if bcrypt.checkpw(secret.encode(), kept.encode()):
                return kept
        except ValueError:
            pass
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt()).decode()


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def ensure_secret(path: str, check_mode: bool, move) -> tuple[str, bool]:
    """The secret in `path` and whether it is new; a new one is written (mode 0600) unless in check mode."""
    secret = read_text(path).strip()
    if secret:
        return secret, False
    secret = new_secret()
    if not check_mode:
        temp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
        # Never readable by anyone else, not even for a moment.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret)
        move(temp, path)
    return secret, True


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    path = module.params["path"]
    secret, created = ensure_secret(path, module.check_mode, module.atomic_move)
    changed = created
    if os.path.exists(path):
        changed = module.set_owner_if_different(path, module.params["owner"], changed)
        changed = module.set_group_if_different(path, module.params["group"], changed)
        changed = module.set_mode_if_different(path, module.params["mode"], changed)
    result = {"changed": changed, "created": created}
    if module.params["web_user"]:
        try:
            import bcrypt
        except ImportError:
            if module.check_mode:
                # A host the role has not run on yet: the apt task before this would install it.
                module.exit_json(**result, bcrypt_hash="")
            module.fail_json(msg="the bcrypt Python library is missing on the host: install python3-bcrypt first")
        kept = current_hash(read_text(module.params["web_config"]), module.params["web_user"])
        result["bcrypt_hash"] = hash_for(secret, kept, bcrypt)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
