#!/usr/bin/python
"""Sign the internal repository's Release file on the controller, with a bounded validity."""

from __future__ import annotations

DOCUMENTATION = r"""
module: apt_release_sign
short_description: Keep the repository's signing key on the controller and sign Release files with Valid-Until
description:
  - Runs on the controller (delegated to localhost). Makes the repository's signing key in
    I(gnupghome) the first time, its secret part under I(passphrase), and returns its fingerprint and
    public key. A home holding more than one secret key is refused.
  - With I(release) (the unsigned Release file aptly wrote), returns it with C(Date) set to now and
    C(Valid-Until) I(valid_for_days) later, clearsigned (C(InRelease)) and with a detached signature
    (C(Release.gpg)). It signs only when I(served) (the InRelease the repository serves now) does not
    verify with this key, lists other files, or has less than I(resign_below) of its validity left;
    otherwise it returns I(served) as it is.
  - The passphrase reaches gpg on a pipe (C(--passphrase-fd)), never on a command line, and the
    agent of I(gnupghome) caches nothing and is stopped after each run.
options:
  gnupghome:
    description: GnuPG home of the signing key on the controller, created with mode 0700.
    type: path
    required: true
  passphrase:
    description: Passphrase of the secret key.
    type: str
    required: true
    no_log: true
  key_uid:
    description: User ID of a key made by this module.
    type: str
    default: sevenleague apt repository <apt-repo@sevenleague.invalid>
  key_algorithm:
    description: Algorithm of a key made by this module.
    type: str
    default: ed25519
  key_expire:
    description: Expiry of a key made by this module, as gpg takes it (C(0) never expires).
    type: str
    default: "0"
  release:
    description: The unsigned Release file to sign; without it only the key is made and read.
    type: str
  served:
    description: The InRelease file served now (empty when there is none).
    type: str
    default: ""
  valid_for_days:
    description: How long a signed Release stays valid.
    type: float
    default: 10
  resign_below:
    description: Sign again when less than this share of the validity is left.
    type: float
    default: 0.75
  now:
    description: Sign as of this time (ISO 8601, UTC) instead of now, and sign whatever I(served) is. For
      tests only (a Release whose validity has passed).
    type: str
author: sevenleague
"""

EXAMPLES = r"""
- name: Sign the Release file aptly wrote
  apt_release_sign:
    gnupghome: "{{ sevenleague_state_dir }}/.apt/signing"
    passphrase: "{{ apt_repo_signing_passphrase }}"
    release: "{{ __release.content | b64decode }}"
    served: "{{ __served.content | default('') | b64decode }}"
  delegate_to: localhost
"""

RETURN = r"""
fingerprint:
  description: Fingerprint of the signing key (empty in check mode before it exists).
  returned: always
  type: str
public_key:
  description: The signing key's public key, ASCII-armoured.
  returned: always
  type: str
signed:
  description: Whether a new signature was made.
  returned: when release is given
  type: bool
reason:
  description: Why it signed, or why the served file stays.
  returned: when release is given
  type: str
release:
  description: The Release file with Date and Valid-Until, as signed.
  returned: when release is given
  type: str
inrelease:
  description: The clearsigned Release file.
  returned: when release is given
  type: str
release_gpg:
  description: The detached, armoured signature of I(release) (empty when nothing was signed).
  returned: when release is given
  type: str
valid_until:
  description: Valid-Until of what the repository is to serve, ISO 8601.
  returned: when release is given
  type: str
"""

import datetime
import os
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TIME_FIELDS = ("Date", "Valid-Until")
# The agent caches no passphrase; loopback lets gpg take it from the pipe.
AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n"


class SignError(Exception):
    """A problem the operator must fix; the message says what."""


def read(path: str) -> str:
    """A file's text, or '' when it does not exist."""
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def release_date(when: datetime.datetime) -> str:
    """RFC 1123 in UTC, as Debian's archives write it (English names whatever the locale)."""
    when = when.astimezone(datetime.UTC)
    return f"{DAYS[when.weekday()]}, {when.day:02d} {MONTHS[when.month - 1]} {when:%Y %H:%M:%S} UTC"


def parse_date(value: str) -> datetime.datetime:
    """The inverse of release_date; apt writes the zone as UTC or GMT."""
    parts = value.split()
    if len(parts) != 6 or parts[5] not in ("UTC", "GMT", "+0000") or parts[2] not in MONTHS:
        raise ValueError(f"not a Release date: {value!r}")
    hour, minute, second = (int(p) for p in parts[4].split(":"))
    return datetime.datetime(
        int(parts[3]), MONTHS.index(parts[2]) + 1, int(parts[1]), hour, minute, second, tzinfo=datetime.UTC
    )


def fields(text: str) -> dict[str, str]:
    """The single-line fields of a Release file."""
    found = {}
    for line in text.splitlines():
        if line[:1] not in ("", " ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            found[key] = value.strip()
    return found


def without_times(text: str) -> str:
    """The Release file without Date and Valid-Until: what decides whether it lists the same files."""
    kept = [line for line in text.splitlines() if line.partition(":")[0] not in TIME_FIELDS]
    return "\n".join(kept).strip() + "\n"


def rewrite(text: str, now: datetime.datetime, valid_for: datetime.timedelta) -> str:
    """The Release file with Date now and Valid-Until `valid_for` later, in place of aptly's Date."""
    stamps = [f"Date: {release_date(now)}", f"Valid-Until: {release_date(now + valid_for)}"]
    lines = [line for line in text.splitlines() if line.partition(":")[0] != "Valid-Until"]
    out, placed = [], False
    for line in lines:
        name = line.partition(":")[0]
        if name == "Date":
            out.extend(stamps)
            placed = True
        elif not placed and line[:1] not in (" ", "\t") and name in ("MD5Sum", "SHA1", "SHA256", "SHA512"):
            out.extend(stamps)
            out.append(line)
            placed = True
        else:
            out.append(line)
    if not placed:
        out.extend(stamps)
    return "\n".join(out) + "\n"


def decide(
    release: str,
    served_body: str | None,
    now: datetime.datetime,
    valid_for: datetime.timedelta,
    resign_below: float,
) -> str:
    """Why to sign `release` now, or '' when the served body (verified, or None) is good as it is."""
    if served_body is None:
        return "no InRelease signed by this key is served"
    if without_times(served_body) != without_times(release):
        return "the served InRelease lists other files than aptly's Release"
    try:
        until = parse_date(fields(served_body)["Valid-Until"])
    except (KeyError, ValueError):
        return "the served InRelease has no Valid-Until"
    if until - now < valid_for * resign_below:
        return f"the served InRelease is valid until {until.isoformat()}, less than {resign_below:.0%} of the validity"
    return ""


class Gpg:
    """gpg in one home, the passphrase on a pipe."""

    def __init__(self, home: str, passphrase: str):
        self.home = home
        self.passphrase = passphrase

    def __call__(self, *args: str, secret: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["gpg", "--homedir", self.home, "--batch", "--no-tty", "--status-fd", "2"]
        fds = ()
        if secret:
            read, write = os.pipe()
            os.write(write, self.passphrase.encode() + b"\n")
            os.close(write)
            cmd += ["--pinentry-mode", "loopback", "--passphrase-fd", str(read)]
            fds = (read,)
        try:
            proc = subprocess.run([*cmd, *args], capture_output=True, text=True, pass_fds=fds, check=False)
        finally:
            for fd in fds:
                os.close(fd)
        if check and proc.returncode != 0:
            raise SignError(f"gpg {' '.join(args[:1])} failed: {proc.stderr.strip()}")
        return proc

    def secret_fingerprints(self) -> list[str]:
        out = self("--with-colons", "--list-secret-keys", check=False).stdout
        fprs, take = [], False
        for line in out.splitlines():
            kind = line.split(":")[0]
            if kind == "sec":
                take = True
            elif kind == "fpr" and take:
                fprs.append(line.split(":")[9])
                take = False
        return fprs

    def stop_agent(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "gpg-agent"], capture_output=True, check=False)


def ensure_key(gpg: Gpg, params: dict, check_mode: bool) -> tuple[str, bool]:
    """The one signing key's fingerprint, made when the home has none; whether it was made."""
    if check_mode and not os.path.isdir(gpg.home):
        return "", True
    os.makedirs(gpg.home, mode=0o700, exist_ok=True)
    os.chmod(gpg.home, 0o700)
    conf = os.path.join(gpg.home, "gpg-agent.conf")
    if read(conf) != AGENT_CONF:
        with open(conf + ".tmp", "w") as handle:
            handle.write(AGENT_CONF)
        os.replace(conf + ".tmp", conf)
    fprs = gpg.secret_fingerprints()
    if len(fprs) > 1:
        raise SignError(
            f"{gpg.home} holds {len(fprs)} secret keys ({', '.join(fprs)}); it must hold the repository's "
            f"signing key alone. Remove the others (gpg --homedir {gpg.home} --delete-secret-keys FPR)."
        )
    if fprs:
        return fprs[0], False
    if check_mode:
        return "", True
    gpg(
        "--quick-generate-key",
        params["key_uid"],
        params["key_algorithm"],
        "sign",
        params["key_expire"],
        secret=True,
    )
    fprs = gpg.secret_fingerprints()
    if len(fprs) != 1:
        raise SignError(f"gpg made no usable key in {gpg.home}")
    return fprs[0], True


def verified_body(gpg: Gpg, fingerprint: str, inrelease: str, workdir: str) -> str | None:
    """The text `inrelease` signs, when a good signature of `fingerprint` covers it; else None."""
    if not inrelease.strip():
        return None
    path, plain = os.path.join(workdir, "served"), os.path.join(workdir, "served.txt")
    with open(path, "w") as handle:
        handle.write(inrelease)
    proc = gpg("--yes", "--output", plain, "--decrypt", path, check=False)
    status = [line.split() for line in proc.stderr.splitlines() if line.startswith("[GNUPG:] ")]
    good = any(s[1] == "VALIDSIG" and fingerprint in (s[2], s[-1]) for s in status if len(s) > 2)
    if proc.returncode != 0 or not good:
        return None
    with open(plain) as handle:
        return handle.read()


def sign(gpg: Gpg, fingerprint: str, release: str, workdir: str) -> tuple[str, str]:
    """InRelease (clearsigned) and Release.gpg (detached, armoured) of `release`."""
    path = os.path.join(workdir, "Release")
    with open(path, "w") as handle:
        handle.write(release)
    common = ["--local-user", fingerprint, "--digest-algo", "SHA512", "--yes"]
    gpg(*common, "--output", path + ".in", "--clearsign", path, secret=True)
    gpg(*common, "--armor", "--output", path + ".gpg", "--detach-sign", path, secret=True)
    with open(path + ".in") as inrelease, open(path + ".gpg") as detached:
        return inrelease.read(), detached.read()


def run(params: dict, check_mode: bool = False, now: datetime.datetime | None = None) -> dict:
    gpg = Gpg(params["gnupghome"], params["passphrase"])
    try:
        fingerprint, made = ensure_key(gpg, params, check_mode)
        public = gpg("--armor", "--export", fingerprint).stdout if fingerprint else ""
        result = {"changed": made, "fingerprint": fingerprint, "public_key": public}
        if params.get("release") is None:
            return result
        forced = params.get("now")
        if forced:
            now = datetime.datetime.fromisoformat(forced).replace(tzinfo=datetime.UTC)
        now = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
        valid_for = datetime.timedelta(days=params["valid_for_days"])
        with tempfile.TemporaryDirectory() as workdir:
            body = verified_body(gpg, fingerprint, params["served"], workdir) if fingerprint else None
            reason = (
                "a time to sign at was given"
                if forced
                else decide(params["release"], body, now, valid_for, params["resign_below"])
            )
            if not reason:
                until = parse_date(fields(body)["Valid-Until"])
                return {
                    **result,
                    "signed": False,
                    "reason": f"the served InRelease lists these files and is valid until {until.isoformat()}",
                    "release": body,
                    "inrelease": params["served"],
                    "release_gpg": "",
                    "valid_until": until.isoformat(),
                }
            release = rewrite(params["release"], now, valid_for)
            inrelease, detached = ("", "") if check_mode else sign(gpg, fingerprint, release, workdir)
        return {
            **result,
            "changed": True,
            "signed": not check_mode,
            "reason": reason,
            "release": release,
            "inrelease": inrelease,
            "release_gpg": detached,
            "valid_until": (now + valid_for).isoformat(),
        }
    finally:
        gpg.stop_agent()


ARGUMENT_SPEC = {
    "gnupghome": {"type": "path", "required": True},
    "passphrase": {"type": "str", "required": True, "no_log": True},
    "key_uid": {"type": "str", "default": "sevenleague apt repository <apt-repo@sevenleague.invalid>"},
    "key_algorithm": {"type": "str", "default": "ed25519"},
    "key_expire": {"type": "str", "default": "0"},
    "release": {"type": "str"},
    "served": {"type": "str", "default": ""},
    "valid_for_days": {"type": "float", "default": 10},
    "resign_below": {"type": "float", "default": 0.75},
    "now": {"type": "str"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if not module.params["passphrase"]:
        module.fail_json(msg="the signing key's passphrase is empty: set apt_repo_signing_passphrase")
    try:
        result = run(module.params, module.check_mode)
    except SignError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
