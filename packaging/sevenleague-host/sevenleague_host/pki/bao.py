"""The tool's calls to OpenBao: the issuer, the login with the host's certificate, signing."""

from __future__ import annotations

import os

from ansible_collections.sevenleague.platform.plugins.module_utils import openbao as openbao_api
from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from sevenleague_host.pki.common import FAILURES, OpenBao, Refused, RenewError, log
from sevenleague_host.pki.config import Config


def fetch_issuer(bao: OpenBao, cfg: Config) -> str | None:
    """The certificate of the issuer that signs today, or None when OpenBao cannot tell us now.

    Unauthenticated on purpose: a host whose certificate is fine must not need a login to learn
    that the CA rolled over. Without an answer the lifetime alone decides, which is safe: the
    renewal itself needs OpenBao anyway.
    """
    try:
        answer = bao.request("GET", f"{openbao_api.quote(cfg.bao.pki_mount)}/cert/ca", what="reading the issuing CA")
        pem = (answer.get("data") or {}).get("certificate") or ""
        pki.load_certificate(pem, "issuing CA")
    except FAILURES as exc:
        log.warning("cannot read the issuing CA of %s, deciding from the lifetime alone: %s", cfg.bao.pki_mount, exc)
        return None
    return pem


def login(bao: OpenBao, cfg: Config) -> str:
    """A client token from cert auth, proving the host by the certificate it holds."""
    current = cfg.current
    chain = os.path.join(current, "fullchain.pem")
    certfile = chain if os.path.exists(chain) else os.path.join(current, "cert.pem")
    try:
        answer = bao.request(
            "POST",
            f"auth/{openbao_api.quote(cfg.bao.auth_mount)}/login",
            what=f"the login at auth/{cfg.bao.auth_mount}",
            body={"name": cfg.bao.auth_role},
            client_cert=(certfile, os.path.join(current, "key.pem")),
        )
    except Refused as exc:
        if "invalid certificate" in exc.errors or "no client certificate" in exc.errors:
            raise Refused(
                f"OpenBao refused the login: the certificate is not trusted by auth/{cfg.bao.auth_mount} role "
                f"{cfg.bao.auth_role}, or that role does not exist ({exc.errors})",
                exc.status,
                exc.errors,
            ) from None
        raise Refused(
            f"OpenBao refused the login at auth/{cfg.bao.auth_mount} as role {cfg.bao.auth_role} ({exc.status}): "
            f"{exc.errors}",
            exc.status,
            exc.errors,
        ) from None
    token = (answer.get("auth") or {}).get("client_token")
    if not token:
        raise RenewError(f"OpenBao at {bao.url} answered the login without a client token")
    return token


def revoke_token(bao: OpenBao, token: str) -> None:
    """Best effort: the token is useless after signing, and leaving it valid only widens exposure."""
    try:
        bao.request("POST", "auth/token/revoke-self", what="revoking the token", body={}, token=token)
    except FAILURES as exc:
        log.warning("could not revoke the login token (it expires with its TTL): %s", exc)


def sign(bao: OpenBao, cfg: Config, token: str, csr_pem: str) -> dict:
    """OpenBao's answer to pki/sign/<role> for exactly the configured names."""
    alt_names = sorted({pki.normalize_san(name) for name in cfg.alt_names})
    body = {
        "csr": csr_pem,
        "common_name": cfg.common_name,
        "alt_names": ",".join(alt_names),
        "ip_sans": ",".join(pki.normalize_san(ip) for ip in cfg.ip_sans),
        "ttl": f"{cfg.ttl}s",
        "format": "pem",
        "exclude_cn_from_sans": False,
    }
    where = f"{cfg.bao.pki_mount}/sign/{cfg.bao.pki_role}"
    try:
        answer = bao.request(
            "POST",
            f"{openbao_api.quote(cfg.bao.pki_mount)}/sign/{openbao_api.quote(cfg.bao.pki_role)}",
            what=f"signing at {where}",
            body=body,
            token=token,
        )
    except Refused as exc:
        hint = ""
        if exc.status == 403:
            hint = (
                f" (does the policy of auth/{cfg.bao.auth_mount} role {cfg.bao.auth_role} allow update on {where}, "
                f"and is {cfg.bao.pki_mount} a PKI mount?)"
            )
        raise Refused(
            f"OpenBao refused to sign: {exc.errors} (role {cfg.bao.pki_role} at {cfg.bao.pki_mount}){hint}",
            exc.status,
            exc.errors,
        ) from None
    if not (answer.get("data") or {}).get("certificate"):
        raise RenewError(f"OpenBao answered the signing at {where} without a certificate")
    return answer
