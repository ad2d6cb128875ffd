"""apt trusts the internal repository through its own keyring only, and
refuses it the moment its metadata or key does not match."""

import base64
import datetime
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Commands go straight to the containers through podman, not through one
# `ansible` process per command (Molecule's default for testinfra), which made
# this step minutes long.
testinfra_hosts = ["podman://sl-molecule-apt-client"]

LISTS = "/var/lib/apt/lists"
# The served dists/sevenleague is a link to the signed copy the tests tamper with.
SERVED = "/srv/apt/served/dists/sevenleague"
# The controller state of the scenario (sevenleague_state_dir): the inventory's folder.
STATE = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent


def update(host):
    """apt-get update, reading the internal repository's files afresh."""
    host.run(
        f"find {LISTS} -maxdepth 1 -name '*sevenleague_main*' ! -name '*debian*' -delete; "
        f"find {LISTS} -maxdepth 1 -name '*_dists_sevenleague_*Release*' ! -name '*debian*' -delete"
    )
    # The host's own apt timers may hold the lock for a while: wait for it rather than fail.
    return host.run("apt-get -o DPkg::Lock::Timeout=300 update")


def test_keyring_and_source(host):
    keyring = host.file("/etc/apt/keyrings/sevenleague.asc")
    assert keyring.user == "root" and keyring.mode == 0o644
    assert keyring.contains("BEGIN PGP PUBLIC KEY BLOCK")
    source = host.file("/etc/apt/sources.list.d/sevenleague.sources").content_string
    assert "Signed-By: /etc/apt/keyrings/sevenleague.asc" in source
    assert "trusted" not in source.lower()
    # Only scoped to this source: not in apt's global trust.
    assert not host.file("/etc/apt/trusted.gpg.d/sevenleague.asc").exists


def test_a_debian_name_from_the_repository_never_wins_over_debian(host):
    """prepare.yml published hello 99.0 there, signed like every package: apt ranks it below
    Debian's, installs and upgrades to Debian's hello, and still installs greeter from the
    repository, at the version asked for."""
    assert update(host).rc == 0
    hello = host.check_output("apt-cache policy hello")
    assert re.search(r"^\s+99\.0 1$", hello, re.MULTILINE), hello
    assert "Candidate: 99.0" not in hello, hello
    install = host.run("apt-get install -s hello")
    assert install.rc == 0, install.stderr
    assert "Inst hello (99.0" not in install.stdout and "Inst hello (" in install.stdout, install.stdout
    assert "hello" not in host.check_output("apt-get -s dist-upgrade")
    greeter = host.check_output("apt-cache madison greeter").split("|")[1].strip()
    chosen = host.run(f"apt-get install -s greeter={greeter}")
    assert chosen.rc == 0 and f"Inst greeter ({greeter}" in chosen.stdout, chosen.stdout + chosen.stderr


def test_the_untouched_repository_updates_cleanly(host):
    result = update(host)
    assert result.rc == 0, result.stdout + result.stderr
    assert "W:" not in result.stdout + result.stderr and "E:" not in result.stderr


@pytest.fixture
def dist(host):
    """The signed copy being served, restored with the client's keyring afterwards."""
    path = host.check_output(f"readlink -f {SERVED}")
    host.run(
        f"rm -rf /tmp/dist-backup && cp -a {path} /tmp/dist-backup && "
        "cp -a /etc/apt/keyrings/sevenleague.asc /tmp/keyring-backup"
    )
    yield path
    host.run(
        f"rm -rf {path} && cp -a /tmp/dist-backup {path} && cp -a /tmp/keyring-backup /etc/apt/keyrings/sevenleague.asc"
    )
    assert update(host).rc == 0


def test_a_tampered_packages_file_is_refused(host, dist):
    # apt fetches a compressed index when there is one: tamper with every form the repository has.
    packages = f"{dist}/main/binary-amd64/Packages"
    recompress = (
        "import bz2, gzip, lzma, os, sys; p = sys.argv[1]; d = open(p, 'rb').read(); "
        "[open(p + e, 'wb').write(f(d)) for e, f in "
        "(('.gz', gzip.compress), ('.bz2', bz2.compress), ('.xz', lzma.compress)) if os.path.exists(p + e)]"
    )
    tampered = host.run(
        f"printf 'Package: evil\\nVersion: 6.6.6\\n\\n' >> {packages} && python3 -c \"{recompress}\" {packages}"
    )
    assert tampered.rc == 0, tampered.stderr
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    assert "Hash Sum mismatch" in output or "unexpected size" in output, output


def test_a_tampered_release_file_is_refused(host, dist):
    host.run(f"sed -i 's/^Label: sevenleague/Label: evil/' {dist}/InRelease")
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    # gpgv (apt 2, Debian 12) says BADSIG; sqv (apt 3, Debian 13) says the message was manipulated.
    assert "signatures were invalid" in output or "BADSIG" in output or "Message has been manipulated" in output, output


def test_a_repository_signed_by_an_unknown_key_is_refused(host, dist):
    other = host.run(
        "export GNUPGHOME=$(mktemp -d) && gpg --batch --passphrase '' --quick-generate-key 'stranger' ed25519 sign 0"
        " && gpg --batch --armor --export stranger > /etc/apt/keyrings/sevenleague.asc"
    )
    assert other.rc == 0, other.stderr
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    assert "NO_PUBKEY" in output or "is not signed" in output, output


def test_a_release_signed_by_a_key_made_on_the_repository_host_is_refused(host, dist):
    """What root on the repository host can do: make a key there and sign the indexes with it
    (here over the very Release the controller signed). The client trusts the controller's key alone."""
    forged = host.run(
        "export GNUPGHOME=$(mktemp -d) && gpg --batch --passphrase '' --quick-generate-key 'root on repo' ed25519 sign 0"
        f" && gpg --batch --yes --clearsign -o {dist}/InRelease {dist}/Release"
        f" && gpg --batch --yes --armor --detach-sign -o {dist}/Release.gpg {dist}/Release && rm -rf $GNUPGHOME"
    )
    assert forged.rc == 0, forged.stderr
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    assert "NO_PUBKEY" in output or "is not signed" in output or "Missing key" in output, output


def test_an_inrelease_whose_validity_has_passed_is_refused(host, dist):
    """A repository host that keeps serving what was signed long ago: the controller's signing module,
    told to sign as of 30 days back (its test-only override), gives a Valid-Until in the past."""
    args = {
        "gnupghome": str(STATE / ".apt" / "signing"),
        "passphrase": "molecule-only-apt-signing-passphrase",
        "release": host.file(f"{dist}/Release").content_string,
        "now": (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    run = subprocess.run(
        [shutil.which("ansible"), "localhost", "-m", "apt_release_sign", "-a", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
    )
    start = re.search(r"^\{", run.stdout, re.MULTILINE)
    assert start, run.stdout + run.stderr
    document, _ = json.JSONDecoder().raw_decode(run.stdout[start.start() :])
    signed = document["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert signed.get("signed") is True, signed
    expired = base64.b64encode(signed["inrelease"].encode()).decode()
    host.check_output(f"echo {expired} | base64 -d > {dist}/InRelease")
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    assert "is expired" in output, output
