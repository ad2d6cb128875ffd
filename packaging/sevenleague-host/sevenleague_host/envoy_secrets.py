"""Hand the host's certificate to Envoy, and check that Envoy serves it.

    sevenleague-envoy-secrets [--pki-dir DIR] [--crl FILE] [--sds-dir DIR] [--group NAME]
                              [--admin-socket PATH] [--timeout SECONDS] [--check]

Reads the pki role's current certificate (fullchain.pem, key.pem and the trust bundle
ca.pem) and the issuers' CRLs (FILE, by default crl.pem beside DIR) and writes Envoy's two
file-based SDS secrets: SDS_DIR/ca.yaml (the trust bundle with the CRLs, checked for the peer's
own certificate only: the roots publish none) first, then SDS_DIR/host.yaml (certificate chain and key inline, in one file, so Envoy can
never pair a new certificate with an old key). Each is written to a temporary file in the
same directory and renamed over the old one (mode 0640, root and GROUP): Envoy watches the
directory for renames and reloads the secrets without a restart. The content is JSON, which
Envoy's YAML reader takes as it is. A file already holding the same content is left alone.

Then, when Envoy's admin interface answers on its unix socket PATH (root only), it asks /certs
until every certificate Envoy serves has the new serial, and fails (exit 1) with the serial
still served after TIMEOUT seconds: Envoy has been seen to keep an old certificate after a file
change (envoy issue 39498). When the socket is missing or nothing listens on it, Envoy is not
running and reads the files when it starts: nothing to wait for.

A CRL whose nextUpdate has passed is left out, with a warning: Envoy would refuse every peer
with it, and it lists nothing that still matters (certificates live a day, CRLs a week).

The pki role runs it as the hook hooks.d/70-envoy after every switch to a new certificate
(SEVENLEAGUE_PKI_DIR, SEVENLEAGUE_PKI_SERIAL) and as hooks.d/crl.d/70-envoy after every new CRL,
and the envoy role at every converge. Prints
one line saying what it did; with --check, what it would do, changing nothing.
Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import grp
import http.client
import json
import os
import re
import socket
import sys
import time

from cryptography import x509

from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import replace_file
from ansible_collections.sevenleague.platform.plugins.module_utils.pki_certs import crl_updates

PEM_CRL = re.compile(r"-----BEGIN X509 CRL-----\s+[A-Za-z0-9+/=\s]+?-----END X509 CRL-----")
PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class Failure(Exception):
    """Something the operator must look at; the message says what."""


# --- certificates --------------------------------------------------------------------------


def serial_of(pem: str) -> str:
    """Serial number of the first certificate in a PEM text, lowercase hex in whole bytes (as Envoy's /certs)."""
    match = PEM_CERT.search(pem)
    if not match:
        raise Failure("no PEM certificate found")
    try:
        value = x509.load_pem_x509_certificate(match.group(0).encode()).serial_number
    except ValueError as exc:
        raise Failure(f"the certificate cannot be read: {exc}") from None
    text = format(value, "x")
    return text if len(text) % 2 == 0 else "0" + text


def current_crls(path: str, now: datetime.datetime) -> tuple[str, list[str]]:
    """(the CRLs of the file still in force, PEM; a warning per CRL left out). No file: no CRL."""
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read()
    except FileNotFoundError:
        return "", []
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"cannot read {path}: {exc}") from None
    kept, warnings = [], []
    for match in PEM_CRL.finditer(text):
        try:
            crl = x509.load_pem_x509_crl(match.group(0).encode())
        except ValueError as exc:
            raise Failure(f"{path}: a CRL does not parse: {exc}") from None
        _, end = crl_updates(crl)
        if end is None or end <= now:
            warnings.append(
                f"{path}: the CRL of {crl.issuer.rfc4514_string()} expired at {end}; left out, or Envoy would refuse "
                "every peer (`sevenleague-pki crl` or a converge of the pki layer brings a new one)"
            )
            continue
        kept.append(match.group(0) + "\n")
    return "".join(kept), warnings


def read_identity(pki_dir: str) -> dict:
    """The three files of one release: the current link is resolved once, so a switch meanwhile cannot mix them."""
    release = os.path.realpath(pki_dir)
    files = {}
    for name in ("fullchain.pem", "key.pem", "ca.pem"):
        path = os.path.join(release, name)
        try:
            with open(path, encoding="ascii") as handle:
                files[name] = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise Failure(f"cannot read {path}: {exc}") from None
    if len(PEM_CERT.findall(files["fullchain.pem"])) < 2:
        # Peers trust only roots (ca.pem): without the intermediate they refuse this host.
        raise Failure(f"{release}/fullchain.pem must hold the certificate and its intermediate")
    if not PEM_CERT.search(files["ca.pem"]):
        raise Failure(f"{release}/ca.pem holds no certificate")
    if "PRIVATE KEY-----" not in files["key.pem"]:
        raise Failure(f"{release}/key.pem holds no private key")
    files["serial"] = serial_of(files["fullchain.pem"])
    return files


def validation_context(identity: dict) -> dict:
    """The trust bundle, and the CRLs when there are any. Only the leaf is checked against them:
    the roots publish no CRL, and Envoy otherwise wants one for every CA of the chain."""
    context = {"trusted_ca": {"inline_string": identity["ca.pem"]}}
    if identity.get("crl"):
        context["crl"] = {"inline_string": identity["crl"]}
        context["only_verify_leaf_cert_crl"] = True
    return context


def documents(identity: dict) -> dict[str, str]:
    """file name -> content of the SDS files, in the order they are written: trust first, then identity."""

    def response(secret: dict) -> str:
        return json.dumps({"resources": [{"@type": SECRET_TYPE, **secret}]}, indent=1, sort_keys=True) + "\n"

    return {
        "ca.yaml": response({"name": "ca", "validation_context": validation_context(identity)}),
        "host.yaml": response(
            {
                "name": "host",
                "tls_certificate": {
                    "certificate_chain": {"inline_string": identity["fullchain.pem"]},
                    "private_key": {"inline_string": identity["key.pem"]},
                },
            }
        ),
    }


# --- files ---------------------------------------------------------------------------------


def _current(path: str) -> tuple[str | None, tuple[int, int, int] | None]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        info = os.stat(path)
    except (OSError, UnicodeDecodeError):
        return None, None
    return text, (info.st_mode & 0o7777, info.st_uid, info.st_gid)


def install(sds_dir: str, docs: dict[str, str], group: str, check: bool) -> list[str]:
    """Write what differs; returns the names written (or that would be)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        if check:  # a check before the first install: everything is still to come
            return list(docs)
        raise Failure(f"group {group} does not exist (the envoy package creates it)") from None
    if not os.path.isdir(sds_dir):
        if check:
            return list(docs)
        raise Failure(f"{sds_dir} is not a directory (the envoy role creates it)")
    owner = 0 if os.geteuid() == 0 else os.geteuid()
    changed = []
    for name, content in docs.items():
        text, meta = _current(os.path.join(sds_dir, name))
        if text == content and meta == (0o640, owner, gid):
            continue
        changed.append(name)
        if not check:
            # A dot name while it is written, which Envoy's watch ignores; then one rename.
            replace_file(os.path.join(sds_dir, name), content.encode(), 0o640, gid=gid)
    return changed


# --- Envoy ---------------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: Envoy's admin interface."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def admin_get(admin_socket: str, path: str, timeout: float = 5) -> bytes | None:
    """The body of GET path from Envoy's admin interface, or None when Envoy does not listen there."""
    where = f"{admin_socket} {path}"
    conn = _UnixConnection(admin_socket, timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
    except (FileNotFoundError, ConnectionRefusedError):
        # No socket (the unit's runtime directory goes with Envoy), or one left by a dead Envoy.
        return None
    except PermissionError:
        raise Failure(f"{where}: permission denied (the admin socket is root's)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Failure(f"{where}: {exc}") from None
    finally:
        conn.close()
    if answer.status != 200:
        raise Failure(f"{where}: HTTP {answer.status}")
    return body


def served_serials(admin_socket: str) -> list[str] | None:
    """Serials of every certificate chain Envoy serves, or None when its admin interface does not answer."""
    body = admin_get(admin_socket, "/certs")
    if body is None:
        return None
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Failure(f"{admin_socket} /certs: {exc}") from None
    serials = []
    for context in data.get("certificates") or []:
        for cert in context.get("cert_chain") or []:
            serial = (cert.get("serial_number") or "").lower().lstrip("0")
            serials.append(serial)
    return serials


def wait_for_serial(admin_socket: str, serial: str, timeout: float, interval: float = 0.5) -> str:
    """'not running', or 'serving' once every chain Envoy serves has the serial; Failure after timeout."""
    want = serial.lower().lstrip("0")
    deadline = time.monotonic() + timeout
    seen: list[str] | None = []
    while True:
        seen = served_serials(admin_socket)
        if seen is None:
            return "not running"
        if seen and all(s == want for s in seen):
            return "serving"
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    old = sorted({s for s in seen if s != want}) if seen else []
    raise Failure(
        f"after {timeout:g} s Envoy still serves {', '.join(old) or 'no certificate'} instead of {serial}: "
        "it did not reload the SDS files (envoy issue 39498). `systemctl restart envoy` makes it read "
        "them; `journalctl -u envoy` may say why"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pki-dir", default=os.environ.get("SEVENLEAGUE_PKI_DIR", "/etc/sevenleague/pki/current"))
    parser.add_argument("--crl", help="the issuers' CRLs (PEM); default crl.pem beside --pki-dir")
    parser.add_argument("--sds-dir", default="/etc/envoy/sds")
    parser.add_argument("--group", default="envoy")
    parser.add_argument("--admin-socket", default="/run/envoy/admin.sock")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--check", action="store_true", help="say what would change, change nothing")
    args = parser.parse_args(argv)
    try:
        identity = read_identity(args.pki_dir)
        crl_file = args.crl or os.path.join(os.path.dirname(os.path.normpath(args.pki_dir)), "crl.pem")
        identity["crl"], warnings = current_crls(crl_file, datetime.datetime.now(datetime.UTC))
        for warning in warnings:
            print(f"sevenleague-envoy-secrets: {warning}", file=sys.stderr)
        announced = os.environ.get("SEVENLEAGUE_PKI_SERIAL", "").lower()
        if announced and announced.lstrip("0") != identity["serial"].lstrip("0"):
            # The current link moved on since the hook started: the newest certificate is the one to serve.
            print(f"note: {args.pki_dir} now holds certificate {identity['serial']}, not {announced}", file=sys.stderr)
        changed = install(args.sds_dir, documents(identity), args.group, args.check)
        if args.check:
            print(f"would update {' '.join(changed)}" if changed else "up to date")
            return 0
        state = wait_for_serial(args.admin_socket, identity["serial"], args.timeout)
    except Failure as exc:
        print(f"sevenleague-envoy-secrets: {exc}", file=sys.stderr)
        return 1
    what = f"updated {' '.join(changed)}" if changed else "up to date"
    crls = identity["crl"].count("BEGIN X509 CRL")
    print(f"{what}; certificate {identity['serial']}; {crls} CRL(s); Envoy {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
