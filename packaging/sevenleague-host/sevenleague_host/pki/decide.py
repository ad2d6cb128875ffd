"""Whether a certificate is due, and what the host publishes about it (the fact, the metrics)."""

from __future__ import annotations

import datetime
import json
import os

from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import read_or_none, replace_file
from sevenleague_host.pki.config import Config
from sevenleague_host.pki.store import now_utc


def _same_pem(a: bytes | str | None, b: bytes | str | None) -> bool:
    return pki.split_pem(a or b"") == pki.split_pem(b or b"")


def decide(
    cfg: Config,
    cert_pem: bytes | None,
    issuer_pem: str | None,
    trust_pem: str | None,
    now: datetime.datetime,
    force: bool = False,
) -> tuple[bool, str]:
    """The renewal policy (the pki module_utils), and a trust bundle other than the expected one."""
    renew, reason = pki.renewal_decision(cert_pem, now=now, wanted_sans=cfg.wanted_sans(), issuer_cert_pem=issuer_pem)
    if not renew and trust_pem and not _same_pem(read_or_none(os.path.join(cfg.current, "ca.pem")), trust_pem):
        renew, reason = True, "the trust bundle changed"
    if force and not renew:
        return True, f"forced; otherwise {reason}"
    return renew, reason


def fact_document(cfg: Config, info: dict) -> dict:
    """ansible_local.<name>: where consumers find the files (through `current`, so the paths stay
    the same across renewals), where their reload hooks go, and what the certificate is."""
    current = cfg.current
    return {
        "backend": cfg.backend,
        "name": cfg.name,
        "base_dir": cfg.base_dir,
        "hooks_dir": cfg.hooks_dir,
        "dir": current,
        "cert": f"{current}/cert.pem",
        "key": f"{current}/key.pem",
        "chain": f"{current}/chain.pem",
        "fullchain": f"{current}/fullchain.pem",
        "ca": f"{current}/ca.pem",
        "key_group": cfg.key_group,
        "sans": cfg.wanted_sans(),
        "serial": info.get("serial", ""),
        "not_after": info.get("not_after", ""),
    }


def _publications(cfg: Config, cert_pem: bytes) -> list[tuple[str, bytes]]:
    info = pki.cert_info(cert_pem)
    out = []
    if cfg.fact_file:
        out.append((cfg.fact_file, (json.dumps(fact_document(cfg, info), indent=4, sort_keys=True) + "\n").encode()))
    if cfg.textfile:
        out.append((cfg.textfile, pki.textfile_metrics([(cfg.name, info)], now_utc()).encode()))
    return out


def stale_publications(cfg: Config, cert_pem: bytes | None) -> list[str]:
    """The fact and metrics files that do not describe the current certificate."""
    if not cert_pem:
        return []
    return [path for path, data in _publications(cfg, cert_pem) if read_or_none(path) != data]


def publish(cfg: Config, cert_pem: bytes) -> list[str]:
    """Write the fact and the metrics that differ; returns the paths written."""
    written = []
    for path, data in _publications(cfg, cert_pem):
        if read_or_none(path) != data:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            replace_file(path, data, 0o644)
            written.append(path)
    return written
