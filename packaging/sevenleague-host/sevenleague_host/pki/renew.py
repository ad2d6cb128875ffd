"""The timer's renewal through OpenBao, and the revocation of what a new key replaced."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import time

from ansible_collections.sevenleague.platform.plugins.module_utils import openbao as openbao_api
from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import read_or_none, replace_file
from sevenleague_host.pki.bao import fetch_issuer, login, revoke_token, sign
from sevenleague_host.pki.common import FAILURES, PENDING_GRACE, OpenBao, Refused, RenewError, log
from sevenleague_host.pki.config import Config
from sevenleague_host.pki.crl import fetch as fetch_crls
from sevenleague_host.pki.crl import install as install_crls
from sevenleague_host.pki.decide import decide, publish
from sevenleague_host.pki.install import discard_pending, install, request
from sevenleague_host.pki.store import current_release, describe, locked, now_utc, read_current

# In a release whose certificate OpenBao revoked (or will never accept for revocation): done.
REVOKED_MARK = "revoked"


def revocation_candidates(cfg: Config, now: datetime.datetime) -> list[str]:
    """Earlier releases whose certificate is still valid, from the current certificate's issuer,
    with a key other than the current one, and not revoked yet."""
    current = current_release(cfg)
    current_key = read_or_none(os.path.join(cfg.current, "key.pem"))
    try:
        current_issuer = pki.load_certificate(read_or_none(os.path.join(cfg.current, "cert.pem")) or b"").issuer
        names = sorted(
            entry.name
            for entry in os.scandir(cfg.releases)
            if entry.is_dir(follow_symlinks=False) and entry.name != current
        )
    except (pki.PKIError, FileNotFoundError):
        return []
    found = []
    for name in names:
        path = os.path.join(cfg.releases, name)
        cert_pem, key_pem = read_or_none(os.path.join(path, "cert.pem")), read_or_none(os.path.join(path, "key.pem"))
        if os.path.exists(os.path.join(path, REVOKED_MARK)) or not cert_pem or not key_pem or key_pem == current_key:
            continue
        try:
            cert = pki.load_certificate(cert_pem)
        except pki.PKIError:
            continue
        if cert.issuer == current_issuer and pki.not_after(cert) > now:
            found.append(path)
    return found


def revoke_replaced(cfg: Config, bao: OpenBao) -> list[str]:
    """Revoke, each with its own key (pki revoke-with-key), the still-valid certificates of the
    keys this host no longer uses: whoever copied an old key must not log in with it. OpenBao's
    certificate login asks the PKI's OCSP responder, so a revoked certificate is refused at once.

    Best effort: the new certificate is in use either way. What OpenBao cannot be asked now is
    retried at the next timer run; what it refuses (not its certificate) is marked and left to
    expire. Returns the releases revoked."""
    candidates = revocation_candidates(cfg, now_utc())
    if not candidates or cfg.bao is None:
        return []
    done = []
    try:
        token = login(bao, cfg)
    except FAILURES as exc:
        log.warning(
            "cannot log in to revoke %d replaced certificate(s), retrying at the next run: %s", len(candidates), exc
        )
        return []
    try:
        for path in candidates:
            name = os.path.basename(path)
            body = {
                "certificate": (read_or_none(os.path.join(path, "cert.pem")) or b"").decode(),
                "private_key": (read_or_none(os.path.join(path, "key.pem")) or b"").decode(),
            }
            try:
                bao.request(
                    "POST",
                    f"{openbao_api.quote(cfg.bao.pki_mount)}/revoke-with-key",
                    what=f"revoking the certificate of release {name}",
                    body=body,
                    token=token,
                )
                mark = "revoked\n"
                log.info("revoked the certificate of release %s, whose key was replaced", name)
            except Refused as exc:
                if exc.status in (401, 403):
                    log.warning("OpenBao denied revoking release %s (%s), retrying at the next run", name, exc)
                    continue
                mark = f"not revocable: {exc.errors}\n"
                log.warning("OpenBao refused to revoke release %s (%s); it expires on its own", name, exc.errors)
            except FAILURES as exc:
                log.warning("cannot revoke release %s now, retrying at the next run: %s", name, exc)
                continue
            replace_file(os.path.join(path, REVOKED_MARK), mark.encode(), 0o644)
            done.append(name)
    finally:
        revoke_token(bao, token)
    return done


def refresh_crl(cfg: Config, bao: OpenBao) -> list[str]:
    """Bring the CRL file up to date from OpenBao at every timer run; problems, not failures:
    the file in place stays, and its life (days) outlasts many missed runs."""
    try:
        return install_crls(cfg, fetch_crls(bao, cfg.bao.pki_mount), now_utc(), False)["problems"]
    except (*FAILURES, OSError) as exc:
        log.warning("cannot refresh the CRL now, the one in place stays: %s", exc)
        return []


def unusable_problem(cfg: Config, cert_pem: bytes | None, missing_why: str, now: datetime.datetime) -> str | None:
    """Why the current certificate cannot log in to OpenBao, or None when it can try.

    Cert auth is the only credential a host has: once its certificate is gone or expired, only
    the controller (with the CA's own credentials) can give it a new one. Retrying is useless.
    """
    hint = f"re-issue it from the controller with `ansible-playbook playbooks/pki.yml --limit {cfg.common_name}`"
    if cert_pem is None:
        return f"no current certificate ({missing_why}), so the host cannot log in to OpenBao: {hint}"
    try:
        cert = pki.load_certificate(cert_pem, "current certificate")
    except pki.PKIError as exc:
        return f"{exc}, so the host cannot log in to OpenBao: {hint}"
    end = pki.not_after(cert)
    if now >= end:
        return (
            f"the current certificate {pki.serial_hex(cert.serial_number)} expired at {pki.iso(end)}, so the host "
            f"cannot log in to OpenBao any more: {hint}"
        )
    return None


def renew_once(cfg: Config, bao: OpenBao) -> dict:
    """One attempt: login, request, sign, install. The login token is revoked once used."""
    token = login(bao, cfg)
    try:
        answer = sign(bao, cfg, token, request(cfg))
    except BaseException:
        discard_pending(cfg)
        raise
    finally:
        revoke_token(bao, token)
    data = answer["data"]
    chain = "\n".join(data.get("ca_chain") or [data.get("issuing_ca") or ""])
    try:
        return install(cfg, data["certificate"], chain, None)
    except pki.PKIError as exc:  # a wrong answer: asking again only issues more certificates
        raise RenewError(str(exc)) from None


def renew(cfg: Config, force: bool, check: bool) -> tuple[int, dict]:
    if cfg.bao is None:
        raise pki.PKIError(
            f"{cfg.name} is issued by the {cfg.backend} CA, which only the controller reaches: "
            f"renew with `ansible-playbook playbooks/pki.yml`"
        )
    bao = OpenBao(cfg.bao.url, cfg.bao.server_ca)
    cert_pem, missing_why = read_current(cfg)
    current = describe(cert_pem)
    issuer_pem = fetch_issuer(bao, cfg) if current["serial"] else None
    now = now_utc()
    due, reason = decide(cfg, cert_pem, issuer_pem, None, now, force)
    if check or not due:
        result = {"changed": False, "renew": due, "reason": reason, **current}
        if not due:
            log.info("certificate %s valid until %s; %s", current["serial"], current["not_after"], reason)
            if not check:
                with locked(cfg):
                    revoked = revoke_replaced(cfg, bao)
                    # The clock check in the metrics is as of this run.
                    publish(cfg, cert_pem)
                    problems = refresh_crl(cfg, bao)
                if problems:
                    return 1, {**result, "problems": problems}
                if revoked:
                    result["revoked"] = revoked
        return 0, result
    problem = unusable_problem(cfg, cert_pem, missing_why, now)
    if problem:
        raise pki.PKIError(problem)
    with contextlib.suppress(FileNotFoundError):
        age = time.time() - os.stat(os.path.join(cfg.pending, "key.pem")).st_mtime
        if 0 <= age < PENDING_GRACE:
            # A converge asked for a certificate moments ago and is about to install it.
            log.info("a request made %d s ago is pending (a converge is issuing); not renewing now", age)
            return 0, {"changed": False, "renew": due, "reason": "a request is pending", **current}
    log.info("renewing certificate %s (valid until %s): %s", current["serial"], current["not_after"], reason)
    keeps = f"certificate {current['serial']} (valid until {current['not_after']}) stays in place"
    with locked(cfg):
        try:
            result = renew_with_retries(cfg, lambda: renew_once(cfg, bao))
        except RenewError as exc:
            tries = f" after {cfg.bao.attempts} attempts" if exc.retry and cfg.bao.attempts > 1 else ""
            raise pki.PKIError(f"no new certificate{tries}: {exc}; {keeps}") from None
        except (*FAILURES, OSError, ValueError) as exc:
            raise pki.PKIError(f"no new certificate: {exc}; {keeps}") from None
        revoked = revoke_replaced(cfg, bao)
        result["problems"] = result["problems"] + refresh_crl(cfg, bao)
    if revoked:
        result["revoked"] = revoked
    return (1 if result["problems"] else 0), result


def backoff_delay(attempt: int, initial: float, maximum: float, rand=random.random) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**(attempt-1))], so a fleet whose
    timers fired together after an outage does not hit OpenBao in lockstep again."""
    return rand() * min(maximum, initial * 2 ** (attempt - 1))


def renew_with_retries(cfg: Config, attempt, sleep=time.sleep):
    """attempt() until it succeeds, fails for good, or `attempts` are used up (the last error is raised)."""
    for number in range(1, cfg.bao.attempts + 1):
        try:
            return attempt()
        except RenewError as exc:
            if not exc.retry or number == cfg.bao.attempts:
                raise
            delay = backoff_delay(number, cfg.bao.backoff_initial, cfg.bao.backoff_max)
            log.warning("attempt %d/%d failed: %s; retrying in %.1f s", number, cfg.bao.attempts, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
