"""A new key and its CSR (`request`), and the checked switch to a signed certificate (`install`)."""

from __future__ import annotations

import datetime
import os
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import fsync_dir, read_or_none, write_new_file
from sevenleague_host.pki.common import CURVES, UTC, log
from sevenleague_host.pki.config import Config
from sevenleague_host.pki.decide import publish
from sevenleague_host.pki.store import key_group_gid, make_release_dir, now_utc, prune_releases, run_hooks, swap_current


def build_csr(cfg: Config, key) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cfg.common_name)])
    sans = pki.parse_sans([cfg.common_name, *cfg.alt_names, *cfg.ip_sans])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def discard_pending(cfg: Config) -> None:
    shutil.rmtree(cfg.pending, ignore_errors=True)


def request(cfg: Config) -> str:
    """A new key in <base_dir>/pending (replacing any earlier request's) and its CSR for exactly
    the configured names. The key never leaves the host; its mtime is when it was asked for."""
    gid = key_group_gid(cfg)
    discard_pending(cfg)
    os.mkdir(cfg.pending, 0o700)
    key = ec.generate_private_key(CURVES[cfg.key_curve]())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_new_file(os.path.join(cfg.pending, "key.pem"), key_pem, 0o640, gid)
    return build_csr(cfg, key)


def _pending_key(cfg: Config):
    path = os.path.join(cfg.pending, "key.pem")
    data = read_or_none(path)
    if data is None:
        raise pki.PKIError(f"no pending request in {cfg.pending}: run `request` first, then install its answer")
    asked_at = datetime.datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
    try:
        return serialization.load_pem_private_key(data, password=None), asked_at
    except (ValueError, TypeError) as exc:
        discard_pending(cfg)
        raise pki.PKIError(f"the pending key {path} is unusable ({exc}): run `request` again") from None


def install(cfg: Config, certificate: str, chain: str, trust: str | None) -> dict:
    """Check a signed certificate against the pending key and the config, then switch to it.

    `trust` is the trust bundle (ca.pem) the new release gets; None carries the current one
    forward (the timer: Ansible owns the bundle). Whatever fails before the switch removes the
    pending key and the half-made release: `current` stays as it was.
    """
    gid = key_group_gid(cfg)
    key, asked_at = _pending_key(cfg)
    release = None
    try:
        if trust is None:
            trust = read_or_none(os.path.join(cfg.current, "ca.pem"))
            if trust is None:
                raise pki.PKIError(f"no trust bundle in {cfg.current}/ca.pem to carry forward: run the pki role")
        trust_pem = b"".join(pki.split_pem(trust))
        cert_pem, chain_pem = pki.check_issued(
            certificate,
            public_key=key.public_key(),
            wanted_sans=cfg.wanted_sans(),
            chain_pem=chain,
            trust_pem=trust_pem,
            ttl=cfg.ttl,
            asked_at=asked_at,
        )
        release = make_release_dir(cfg, now_utc(), gid)
        os.rename(os.path.join(cfg.pending, "key.pem"), os.path.join(release, "key.pem"))
        for name, data in (
            ("cert.pem", cert_pem),
            ("chain.pem", chain_pem),
            ("fullchain.pem", cert_pem + chain_pem),
            ("ca.pem", trust_pem),
        ):
            write_new_file(os.path.join(release, name), data, 0o644)
        fsync_dir(release)
        swap_current(cfg, release)
    except BaseException:
        if release:
            shutil.rmtree(release, ignore_errors=True)
        discard_pending(cfg)
        raise
    discard_pending(cfg)
    return after_switch(cfg, release, cert_pem)


def after_switch(cfg: Config, release: str, cert_pem: bytes) -> dict:
    """Prune, publish, hooks. Each is tried even when another failed: the certificate is in use,
    and each of them is independently useful."""
    info = pki.cert_info(cert_pem)
    result = {
        "changed": True,
        "serial": info["serial"],
        "not_after": info["not_after"],
        "release": os.path.basename(release),
        "problems": [],
    }
    log.info(
        "switched %s to releases/%s: certificate %s valid until %s for %s",
        cfg.current,
        result["release"],
        info["serial"],
        info["not_after"],
        ", ".join(info["sans"]),
    )
    try:
        for name in prune_releases(cfg):
            log.info("removed old release %s", name)
    except OSError as exc:
        log.warning("cannot remove old releases in %s: %s", cfg.releases, exc)
    try:
        publish(cfg, cert_pem)
    except OSError as exc:
        result["problems"].append(f"cannot write the fact or the metrics: {exc}")
    failed = run_hooks(cfg, info["serial"])
    if failed:
        result["problems"].append(f"{failed} reload hook(s) in {cfg.hooks_dir} failed (see the messages above)")
    return result
