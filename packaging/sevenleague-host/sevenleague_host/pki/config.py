"""A certificate's config file (/etc/sevenleague/pki/<name>.json): loading and checking it."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re

from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from sevenleague_host.pki.common import CURVES, PENDING

_PATH_SEGMENTS = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclasses.dataclass(frozen=True)
class BaoConfig:
    """Where the timer renews: OpenBao's address, its CA, the login and the signing role."""

    url: str
    server_ca: str | None
    auth_mount: str
    auth_role: str
    pki_mount: str
    pki_role: str
    attempts: int
    backoff_initial: float
    backoff_max: float


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    backend: str
    base_dir: str
    common_name: str
    alt_names: tuple[str, ...]
    ip_sans: tuple[str, ...]
    ttl: int
    key_curve: str
    key_group: str
    keep_releases: int
    textfile: str | None
    fact_file: str | None
    hooks_dir: str | None
    bao: BaoConfig | None

    @property
    def current(self) -> str:
        return os.path.join(self.base_dir, "current")

    @property
    def releases(self) -> str:
        return os.path.join(self.base_dir, "releases")

    @property
    def pending(self) -> str:
        return os.path.join(self.base_dir, PENDING)

    def wanted_sans(self) -> list[str]:
        """The certificate's names as the pki module_utils compares them: the CN is a DNS SAN too."""
        return sorted({pki.normalize_san(name) for name in (self.common_name, *self.alt_names, *self.ip_sans)})


# Every key is named here; nothing has a default the role does not also write, so the config
# on a host always says everything the tool will do.
KEYS = {
    "name",
    "backend",
    "base_dir",
    "common_name",
    "alt_names",
    "ip_sans",
    "ttl",
    "key_curve",
    "key_group",
    "keep_releases",
    "textfile",
    "fact_file",
    "hooks_dir",
    "openbao",
}
BAO_KEYS = {
    "url",
    "server_ca",
    "auth_mount",
    "auth_role",
    "pki_mount",
    "pki_role",
    "attempts",
    "backoff_initial",
    "backoff_max",
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        return False
    return True


def _is_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_path(value) -> bool:
    # The unit runs with / as its working directory: a relative path would be a surprise.
    return _is_text(value) and os.path.isabs(value)


def _need(problems: list[str], conf: dict, key: str, ok, what: str, prefix: str = "") -> None:
    if not ok(conf[key]):
        problems.append(f"{prefix}{key} must be {what}, got {conf[key]!r}")


def _bao_problems(raw) -> list[str]:
    if not isinstance(raw, dict):
        return [f"openbao must be an object or null, got {raw!r}"]
    problems = [f"unknown key openbao.{key}" for key in sorted(set(raw) - BAO_KEYS)]
    problems += [f"openbao.{key} is required" for key in sorted(BAO_KEYS - set(raw))]
    if problems:
        return problems
    need = lambda key, ok, what: _need(problems, raw, key, ok, what, "openbao.")  # noqa: E731
    need("url", lambda v: _is_text(v) and v.startswith("https://"), "an https:// URL (cert auth needs TLS)")
    need("server_ca", lambda v: v is None or _is_path(v), "an absolute path or null")
    for key in ("auth_mount", "pki_mount"):
        need(key, lambda v: _is_text(v) and bool(_PATH_SEGMENTS.match(v.strip("/"))), "a mount path")
    for key in ("auth_role", "pki_role"):
        need(key, lambda v: _is_text(v) and bool(_PATH_SEGMENTS.match(v)) and "/" not in v, "a role name")
    need("attempts", lambda v: _is_int(v) and v >= 1, "a whole number, at least 1")
    need("backoff_initial", lambda v: _is_number(v) and v >= 0, "seconds, at least 0")
    need("backoff_max", lambda v: _is_number(v) and v >= 0, "seconds, at least 0")
    if not problems and raw["server_ca"] and not os.path.isfile(raw["server_ca"]):
        problems.append(f"openbao.server_ca {raw['server_ca']} does not exist (it verifies OpenBao's TLS certificate)")
    return problems


def config_problems(raw: dict) -> list[str]:
    """Everything wrong with a config document; checked before anything is touched."""
    problems = [f"unknown key {key!r}" for key in sorted(set(raw) - KEYS)]
    problems += [f"{key} is required" for key in sorted(KEYS - set(raw))]
    if problems:
        return problems
    need = lambda key, ok, what: _need(problems, raw, key, ok, what)  # noqa: E731
    need("name", lambda v: isinstance(v, str) and bool(_NAME.match(v)), "lowercase letters, digits and _")
    need("backend", lambda v: v in ("builtin", "openbao"), "builtin or openbao")
    need("base_dir", _is_path, "an absolute path")
    for key in ("textfile", "fact_file", "hooks_dir"):
        need(key, lambda v: v is None or _is_path(v), "an absolute path or null")
    for key in ("key_group", "common_name"):
        need(key, _is_text, "a non-empty string")
    need(
        "alt_names",
        lambda v: isinstance(v, list) and all(_is_text(n) and not _is_ip(n) for n in v),
        "a list of DNS names (addresses go in ip_sans)",
    )
    need(
        "ip_sans",
        lambda v: isinstance(v, list) and all(isinstance(n, str) and _is_ip(n) for n in v),
        "a list of IP addresses",
    )
    need("ttl", lambda v: _is_int(v) and v >= 60, "whole seconds, at least 60")
    need("key_curve", lambda v: v in CURVES, "one of " + ", ".join(CURVES))
    need("keep_releases", lambda v: _is_int(v) and v >= 1, "a whole number, at least 1")
    if raw.get("openbao") is not None:
        problems += _bao_problems(raw["openbao"])
    if problems:
        return problems
    if _is_ip(raw["common_name"]):
        problems.append("common_name must be a DNS name (addresses go in ip_sans)")
    elif len(raw["common_name"]) > 64:
        problems.append("common_name is longer than the 64 characters a CN may have")
    try:
        pki.parse_sans([raw["common_name"], *raw["alt_names"], *raw["ip_sans"]])
    except pki.PKIError as exc:
        problems.append(str(exc))
    return problems


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        raise pki.PKIError(f"cannot read the config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise pki.PKIError(f"the config {path} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise pki.PKIError(f"the config {path} must be a JSON object")
    problems = config_problems(raw)
    if problems:
        raise pki.PKIError(f"the config {path} is invalid: " + "; ".join(problems))
    bao = None
    if raw["openbao"] is not None:
        b = raw["openbao"]
        bao = BaoConfig(
            url=b["url"].rstrip("/"),
            server_ca=b["server_ca"],
            auth_mount=b["auth_mount"].strip("/"),
            auth_role=b["auth_role"],
            pki_mount=b["pki_mount"].strip("/"),
            pki_role=b["pki_role"],
            attempts=b["attempts"],
            backoff_initial=float(b["backoff_initial"]),
            backoff_max=float(b["backoff_max"]),
        )
    conf = {key: raw[key] for key in KEYS - {"openbao"}}
    conf.update(alt_names=tuple(raw["alt_names"]), ip_sans=tuple(raw["ip_sans"]))
    return Config(**conf, bao=bao)
