"""The CRLs a host's TLS listeners check peers against: <base_dir>/crl.pem, and its hooks.

One file next to the certificate's releases, holding the CRL (PEM) of every issuer that signs:
one, or two during an intermediate rollover. The controller hands it over (`crl --stdin`: the
built-in CA, or a run that just revoked); with the OpenBao backend the host also fetches it itself
(unauthenticated: pki/issuers and pki/issuer/<id>/crl), at every converge and every timer run.

A CRL is installed only when every CRL in it parses and its nextUpdate is ahead: an expired CRL
makes a checking listener (Envoy, BoringSSL) refuse every peer, so an old file stays in place and
the run fails instead. The file is replaced by rename (0644), and after a change the executables in
hooks_dir/crl.d run (as root, like the certificate's hooks), so the consumers load it.
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509

from ansible_collections.sevenleague.platform.plugins.module_utils import openbao as openbao_api
from ansible_collections.sevenleague.platform.plugins.module_utils import pki, pki_certs
from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import read_or_none, replace_file
from sevenleague_host.pki.common import OpenBao, log
from sevenleague_host.pki.config import Config
from sevenleague_host.pki.store import run_hooks

CRL_FILE = "crl.pem"
CRL_HOOKS = "crl.d"
BEGIN, END = "-----BEGIN X509 CRL-----", "-----END X509 CRL-----"


def crl_path(cfg: Config) -> str:
    return os.path.join(cfg.base_dir, CRL_FILE)


def split_crls(text: str) -> list[str]:
    """Each PEM CRL in `text`, normalised to end in one newline."""
    found = []
    rest = text
    while BEGIN in rest:
        start = rest.index(BEGIN)
        end = rest.find(END, start)
        if end < 0:
            raise pki.PKIError("a CRL in the input is cut short (no END line)")
        found.append(rest[start : end + len(END)].strip() + "\n")
        rest = rest[end + len(END) :]
    return found


def checked(text: str, now: datetime.datetime) -> str:
    """The CRLs of `text` as they will be written: each parsed, none expired, sorted by issuer; else PKIError."""
    crls = split_crls(text)
    if not crls:
        raise pki.PKIError("no CRL in the input")
    keyed = []
    for pem in crls:
        try:
            crl = x509.load_pem_x509_crl(pem.encode())
        except ValueError as exc:
            raise pki.PKIError(f"a CRL does not parse: {exc}") from None
        _, end = pki_certs.crl_updates(crl)
        issuer = crl.issuer.rfc4514_string()
        if end is None or end <= now:
            raise pki.PKIError(
                f"the CRL of {issuer} expired at {pki.iso(end) if end else '(no nextUpdate)'}: installing it would "
                "make every checking listener refuse every peer; the CRL in place stays"
            )
        keyed.append((issuer, pem))
    return "".join(pem for _, pem in sorted(set(keyed)))


def fetch(bao: OpenBao, mount: str) -> str:
    """The CRL of every issuer of the PKI mount that has a key (the ones that sign), PEM."""
    answer = bao.request("GET", f"{openbao_api.quote(mount)}/issuers?list=true", what=f"listing {mount}'s issuers")
    info = (answer.get("data") or {}).get("key_info") or {}
    signing = sorted(ref for ref, meta in info.items() if (meta or {}).get("key_id"))
    if not signing:
        raise pki.PKIError(f"{mount} lists no issuer with a key, so no CRL")
    pems = []
    for ref in signing:
        data = bao.request("GET", f"{openbao_api.quote(mount)}/issuer/{ref}/crl", what=f"reading the CRL of {ref}")
        pem = (data.get("data") or {}).get("crl") or ""
        if BEGIN not in pem:
            raise pki.PKIError(f"{mount}/issuer/{ref}/crl answered without a CRL")
        pems.append(pem)
    return "".join(pems)


def install(cfg: Config, text: str, now: datetime.datetime, check: bool) -> dict:
    """Write the checked CRLs when they differ from the file, then run the CRL hooks."""
    content = checked(text, now)
    path = crl_path(cfg)
    old = read_or_none(path)
    count = content.count(BEGIN)
    if old == content.encode():
        return {"changed": False, "crl": path, "crls": count, "problems": []}
    if check:
        return {"changed": True, "crl": path, "crls": count, "problems": []}
    replace_file(path, content.encode(), 0o644)
    log.info("installed %d CRL(s) in %s", count, path)
    problems = []
    failed = run_hooks(cfg, "", os.path.join(cfg.hooks_dir, CRL_HOOKS)) if cfg.hooks_dir else 0
    if failed:
        problems.append(f"{failed} CRL hook(s) in {cfg.hooks_dir}/{CRL_HOOKS} failed (see the messages above)")
    return {"changed": True, "crl": path, "crls": count, "problems": problems}


def refresh(cfg: Config, stdin_text: str | None, now: datetime.datetime, check: bool) -> dict:
    """From the controller (stdin) when given, else from OpenBao (the OpenBao backend only)."""
    if stdin_text is None:
        if cfg.bao is None:
            raise pki.PKIError(
                f"{cfg.name} is issued by the {cfg.backend} CA, which only the controller reaches: its CRL comes "
                "with `ansible-playbook playbooks/pki.yml`"
            )
        stdin_text = fetch(OpenBao(cfg.bao.url, cfg.bao.server_ca), cfg.bao.pki_mount)
    return install(cfg, stdin_text, now, check)
