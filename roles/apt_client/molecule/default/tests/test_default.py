"""apt trusts the internal repository through its own keyring only, and
refuses it the moment its metadata or key does not match."""

import re

import pytest

# Commands go straight to the containers through podman, not through one
# `ansible` process per command (Molecule's default for testinfra), which made
# this step minutes long.
testinfra_hosts = ["podman://sl-molecule-apt-client"]

LISTS = "/var/lib/apt/lists"
DIST = "/srv/apt/public/dists/sevenleague"


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
def restore(host):
    host.run(
        f"rm -rf /tmp/dist-backup && cp -a {DIST} /tmp/dist-backup && "
        "cp -a /etc/apt/keyrings/sevenleague.asc /tmp/keyring-backup"
    )
    yield
    host.run(
        f"rm -rf {DIST} && cp -a /tmp/dist-backup {DIST} && cp -a /tmp/keyring-backup /etc/apt/keyrings/sevenleague.asc"
    )
    assert update(host).rc == 0


def test_a_tampered_packages_file_is_refused(host, restore):
    # apt fetches a compressed index when there is one: tamper with every form the repository has.
    packages = f"{DIST}/main/binary-amd64/Packages"
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


def test_a_tampered_release_file_is_refused(host, restore):
    host.run(f"sed -i 's/^Label: sevenleague/Label: evil/' {DIST}/InRelease")
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    # gpgv (apt 2, Debian 12) says BADSIG; sqv (apt 3, Debian 13) says the message was manipulated.
    assert "signatures were invalid" in output or "BADSIG" in output or "Message has been manipulated" in output, output


def test_a_repository_signed_by_an_unknown_key_is_refused(host, restore):
    other = host.run(
        "export GNUPGHOME=$(mktemp -d) && gpg --batch --passphrase '' --quick-generate-key 'stranger' ed25519 sign 0"
        " && gpg --batch --armor --export stranger > /etc/apt/keyrings/sevenleague.asc"
    )
    assert other.rc == 0, other.stderr
    result = update(host)
    output = result.stdout + result.stderr
    assert result.rc != 0
    assert "NO_PUBKEY" in output or "is not signed" in output, output
