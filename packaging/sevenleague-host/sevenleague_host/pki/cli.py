"""sevenleague-pki: the one way a host's certificate is installed, and renewed without Ansible.

    sevenleague-pki status  --config FILE   decide, from what the controller expects (stdin)
    sevenleague-pki request --config FILE   a new key on the host, and its CSR
    sevenleague-pki install --config FILE   check a signed certificate (stdin) and switch to it
    sevenleague-pki publish --config FILE   bring the local fact and the metrics up to date
    sevenleague-pki renew   --config FILE   the timer: all of the above through OpenBao, and the CRL
    sevenleague-pki crl     --config FILE   install the CRLs (stdin with --stdin, else from OpenBao)
    sevenleague-pki check-config FILE       validate a config before it is installed

The pki role writes the config (<pki_dir>/<name>.json), decides with `status`, has
the controller's CA sign the CSR of `request`, and hands the answer to `install`. The timer runs
`renew`, which logs in to OpenBao with the certificate the host holds and goes through the same
`request` and `install`. Both paths therefore check, switch, prune, publish and run the reload
hooks identically. The renewal policy and the checks on an issued certificate are
those of the collection's pki module_utils, which the controller's modules use too.

Every renewal makes a new key: an unused key is never reused, and a key that leaked stops being
useful at the next renewal. Commands print one JSON object on stdout; problems go to stderr,
with sd-daemon priority prefixes under systemd. Exit status 0 on success, 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from ansible_collections.sevenleague.platform.plugins.module_utils import pki
from sevenleague_host import __version__
from sevenleague_host.journal import JournalFormatter
from sevenleague_host.pki.common import FAILURES, OpenBao, log
from sevenleague_host.pki.config import load_config
from sevenleague_host.pki.crl import refresh
from sevenleague_host.pki.decide import decide, publish, stale_publications
from sevenleague_host.pki.install import install, request
from sevenleague_host.pki.renew import renew, revoke_replaced
from sevenleague_host.pki.store import describe, locked, now_utc, read_current


def _stdin_json() -> dict:
    try:
        data = json.load(sys.stdin)
    except ValueError as exc:
        raise pki.PKIError(f"stdin is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise pki.PKIError("stdin must hold a JSON object")
    return data


def command(args: argparse.Namespace) -> tuple[int, dict]:
    if args.command == "check-config":
        load_config(args.file)
        return 0, {"changed": False}
    cfg = load_config(args.config)
    if args.command == "status":
        expected = _stdin_json() if args.expect else {}
        cert_pem, _ = read_current(cfg)
        due, reason = decide(cfg, cert_pem, expected.get("issuer") or None, expected.get("ca") or None, now_utc())
        return 0, {
            "changed": False,
            "renew": due,
            "reason": reason,
            **describe(cert_pem),
            "stale": stale_publications(cfg, cert_pem) if not due else [],
        }
    if args.command == "request":
        with locked(cfg):
            return 0, {"changed": True, "csr": request(cfg)}
    if args.command == "install":
        answer = _stdin_json()
        if not isinstance(answer.get("certificate"), str):
            raise pki.PKIError("stdin needs certificate (PEM), and may give chain (PEM) and ca (the trust bundle)")
        with locked(cfg):
            result = install(cfg, answer["certificate"], answer.get("chain") or "", answer.get("ca"))
            revoked = revoke_replaced(cfg, OpenBao(cfg.bao.url, cfg.bao.server_ca)) if cfg.bao else []
            if revoked:
                result["revoked"] = revoked
        return (1 if result["problems"] else 0), result
    if args.command == "publish":
        with locked(cfg):
            cert_pem, why = read_current(cfg)
            if cert_pem is None:
                raise pki.PKIError(f"nothing to publish: {why}")
            written = publish(cfg, cert_pem)
        return 0, {"changed": bool(written), "written": written}
    if args.command == "crl":
        text = sys.stdin.read() if args.stdin else None
        with locked(cfg):
            result = refresh(cfg, text, now_utc(), args.check)
        return (1 if result["problems"] else 0), result
    return renew(cfg, args.force, args.check)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sevenleague-pki", description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    for name, text in (
        ("status", "decide whether the certificate is due; --expect reads {issuer, ca} on stdin"),
        ("request", "generate a new key and print its CSR"),
        ("install", "check the signed {certificate, chain, ca} on stdin and switch to it"),
        ("publish", "bring the local fact and the metrics up to date"),
        ("renew", "renew through OpenBao when due (the timer)"),
        ("crl", "install the issuers' CRLs, from stdin (--stdin) or OpenBao"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--config", required=True, help="the certificate's config, <pki_dir>/<name>.json, as the pki role writes it"
        )
        if name == "status":
            cmd.add_argument("--expect", action="store_true", help="read the expected issuer and trust bundle on stdin")
        if name == "crl":
            cmd.add_argument("--stdin", action="store_true", help="read the CRLs (PEM) on stdin")
            cmd.add_argument("--check", action="store_true", help="say whether the file would change; change nothing")
        if name == "renew":
            cmd.add_argument("--check", action="store_true", help="print the decision and change nothing")
            cmd.add_argument("--force", action="store_true", help="renew even when the certificate is not due")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    formatter = JournalFormatter()
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        try:
            status, result = command(args)
        except (*FAILURES, OSError) as exc:
            message = str(exc) if isinstance(exc, FAILURES) else f"{exc.filename or ''}: {exc.strerror or exc}"
            log.error("%s", message)
            print(json.dumps({"failed": True, "msg": message}))
            return 1
        for problem in result.get("problems", []):
            log.error("%s", problem)
        print(json.dumps(result, sort_keys=True))
        return status
    finally:
        log.removeHandler(handler)


def run() -> None:
    """The console entry point."""
    # systemd stops the unit with SIGTERM: exit through the cleanup, so no half-built release stays.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
