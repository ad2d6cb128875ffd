"""The certificate's directory on the host: releases, the `current` switch, hooks, pruning, the lock."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import grp
import os
import shutil
import stat
import subprocess
import tempfile
import time

from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import fsync_dir
from sevenleague_host.pki.common import HOOK_TIMEOUT, RELEASE_FORMAT, UTC, RenewError, log
from sevenleague_host.pki.config import Config


def make_release_dir(cfg: Config, now: datetime.datetime, gid: int) -> str:
    """A new, empty release directory; a second renewal in the same second gets a suffix
    (-01, -02, ...), which sorts after the first and before the next second, so pruning by
    name still removes the oldest."""
    os.makedirs(cfg.releases, mode=0o755, exist_ok=True)
    base = now.astimezone(UTC).strftime(RELEASE_FORMAT)
    for suffix in range(100):
        name = base if suffix == 0 else f"{base}-{suffix:02d}"
        path = os.path.join(cfg.releases, name)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chown(path, -1, gid)
        os.chmod(path, 0o750)
        return path
    raise RenewError(f"cannot create a release directory in {cfg.releases}: {base} and 99 suffixes exist")


def swap_current(cfg: Config, release: str) -> None:
    """Point `current` at `release` in one rename: consumers (Envoy's watched_directory) see the
    old release or the new one, never a new certificate with an old key."""
    link = os.path.join(cfg.base_dir, "current.new")
    with contextlib.suppress(OSError):
        os.unlink(link)  # left by an interrupted run
    os.symlink(os.path.join("releases", os.path.basename(release)), link)
    os.replace(link, cfg.current)
    fsync_dir(cfg.base_dir)


def current_release(cfg: Config) -> str | None:
    """The name of the release `current` points to, or None."""
    try:
        return os.path.basename(os.path.normpath(os.readlink(cfg.current)))
    except OSError:
        return None


def run_hooks(cfg: Config, serial: str, directory: str | None = None) -> int:
    """Run the executable files of hooks_dir in name order; returns how many failed.

    The reload contract: after every switch to a new certificate, whoever issued it (a converge
    or the timer), each executable in hooks_dir runs once as root with SEVENLEAGUE_PKI_NAME,
    SEVENLEAGUE_PKI_DIR (the `current` directory) and SEVENLEAGUE_PKI_SERIAL set, and must make
    its consumer use the new files (a reload, or a check that it already does). A failing hook
    does not undo the switch: the certificate is right, the consumer is not, and rolling back
    would only make both wrong once the old certificate expires. The run fails loudly instead.
    The CRL's hooks (`directory`, hooks_dir/crl.d) run the same way after the CRL file changed.
    """
    hooks_dir = directory or cfg.hooks_dir
    if not hooks_dir or not os.path.isdir(hooks_dir):
        return 0
    env = {
        **os.environ,
        "SEVENLEAGUE_PKI_NAME": cfg.name,
        "SEVENLEAGUE_PKI_DIR": cfg.current,
        "SEVENLEAGUE_PKI_SERIAL": serial,
    }
    failures = 0
    keeps = f"certificate {serial} stays in place"
    for name in sorted(os.listdir(hooks_dir)):
        path = os.path.join(hooks_dir, name)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode) or not os.access(path, os.X_OK):
            continue
        # Stdout carries the tool's JSON answer: a hook's output is logged, line by line. A file,
        # not a pipe: a daemon the hook leaves running cannot hold the tool up by keeping it open.
        with tempfile.TemporaryFile() as output:
            try:
                result = subprocess.run(
                    [path],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=HOOK_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                log.error("hook %s did not finish within %d s and was killed; %s", path, HOOK_TIMEOUT, keeps)
            except OSError as exc:
                log.error("hook %s cannot run: %s; %s", path, exc.strerror, keeps)
            else:
                output.seek(0)
                for line in output.read().decode(errors="replace").splitlines():
                    if line.strip():
                        (log.info if result.returncode == 0 else log.error)("hook %s: %s", path, line)
                if result.returncode == 0:
                    log.info("hook %s done", path)
                    continue
                log.error("hook %s failed with exit code %d; %s", path, result.returncode, keeps)
        failures += 1
    return failures


def prune_releases(cfg: Config) -> list[str]:
    """Remove old releases, keeping the current one and the keep_releases newest others (for a
    rollback by hand); returns the names removed."""
    keep = current_release(cfg)
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(cfg.releases)
            if entry.is_dir(follow_symlinks=False) and entry.name != keep
        )
    except FileNotFoundError:
        return []
    doomed = names[: -cfg.keep_releases] if len(names) > cfg.keep_releases else []
    for name in doomed:
        shutil.rmtree(os.path.join(cfg.releases, name))
    return doomed


def key_group_gid(cfg: Config) -> int:
    try:
        return grp.getgrnam(cfg.key_group).gr_gid
    except KeyError:
        raise pki.PKIError(f"key_group {cfg.key_group} does not exist (the pki role creates it)") from None


@contextlib.contextmanager
def locked(cfg: Config):
    """An exclusive lock for anything that changes base_dir: the timer and a converge must not
    build two releases, or a key and its certificate from different requests."""
    os.makedirs(cfg.base_dir, mode=0o755, exist_ok=True)
    with open(os.path.join(cfg.base_dir, ".lock"), "a") as handle:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise pki.PKIError(f"another sevenleague-pki holds {cfg.base_dir}/.lock for 2 minutes") from None
                time.sleep(0.2)
        yield


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def read_current(cfg: Config) -> tuple[bytes | None, str]:
    """The current certificate's PEM and, when there is none, why."""
    path = os.path.join(cfg.current, "cert.pem")
    try:
        with open(path, "rb") as handle:
            return handle.read(), ""
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"


def describe(cert_pem: bytes | None) -> dict:
    """serial and not_after of a certificate, both None when it cannot be read."""
    try:
        info = pki.cert_info(cert_pem) if cert_pem else {}
    except pki.PKIError:
        info = {}
    return {"serial": info.get("serial"), "not_after": info.get("not_after")}
