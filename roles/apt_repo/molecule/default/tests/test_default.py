"""The repository host and a client after converge: the client installs from
the signed repository, publishing is safe, and only the fleet reaches it."""

import datetime
import email.utils
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import testinfra

BASEDIR = "/srv/apt"
SERVED = f"{BASEDIR}/served"
# The controller state of the scenario (sevenleague_state_dir): the inventory's folder.
STATE = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
SIGNING_HOME = STATE / ".apt" / "signing"
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def get(name):
    # Straight through podman: the ansible backend starts one `ansible` process per command.
    return testinfra.get_host(f"podman://{name}")


def through_ansible(name):
    """The same host through Ansible, for running the project's own module on it."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="module")
def repo():
    return get("sl-molecule-repo")


@pytest.fixture(scope="module")
def client():
    return get("sl-molecule-client")


@pytest.fixture(scope="module")
def repo_address(repo):
    return repo.interface("eth0").addresses[0]


@pytest.fixture(scope="module")
def greeter_version(repo):
    return repo.check_output(f"dpkg-deb --field {repo_incoming(repo)} Version")


def repo_incoming(repo):
    return repo.check_output("ls /var/lib/apt-repo/incoming/greeter_*.deb").split()[0]


def test_client_installed_greeter_from_the_repository(client, repo_address, greeter_version):
    assert client.package("greeter").version == greeter_version
    policy = client.check_output("apt-cache policy greeter")
    assert f"http://{repo_address} sevenleague/main" in policy


def test_installed_greeter_answers(client):
    assert client.service("greeter").is_running
    assert client.check_output("curl -fsS http://127.0.0.1:8081/healthz") == '{"status": "ok"}'


def test_the_repository_host_holds_no_secret_key(repo):
    """Root on the repository host finds no key to sign with: not the one it once had (prepare.yml
    made it there), nor any other."""
    assert not repo.file("/var/lib/apt-repo/gnupg").exists
    for home in ("/var/lib/apt-repo/gnupg", "/root/.gnupg"):
        listed = repo.run(f"gpg --homedir {home} --batch --with-colons --list-secret-keys")
        assert "\nsec:" not in "\n" + listed.stdout, listed.stdout
    assert repo.run("find / -xdev -path '*/private-keys-v1.d/*' -type f").stdout == ""
    assert repo.run(f"grep -rl 'PRIVATE KEY' {BASEDIR}").stdout == ""


def test_the_served_inrelease_verifies_with_the_controller_s_key_and_expires(repo, tmp_path):
    """The record clients follow names the controller's key (moved from the host's own), and the
    served InRelease is signed by it with a Valid-Until in the future."""
    keyring = tmp_path / "controller.gpg"
    keyring.write_bytes(
        subprocess.run(["gpg", "--homedir", str(SIGNING_HOME), "--export"], check=True, capture_output=True).stdout
    )
    fingerprint = (
        subprocess.run(
            ["gpg", "--homedir", str(SIGNING_HOME), "--with-colons", "--list-secret-keys"],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.split("\nfpr:")[1]
        .split(":")[8]
    )
    record = json.loads((STATE / ".apt" / "sevenleague.json").read_text())
    assert record["fingerprint"] == fingerprint
    inrelease = tmp_path / "InRelease"
    inrelease.write_text(repo.file(f"{SERVED}/dists/sevenleague/InRelease").content_string)
    check = subprocess.run(["gpgv", "--keyring", str(keyring), str(inrelease)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    until = re.search(r"^Valid-Until: (.*)$", inrelease.read_text(), re.MULTILINE)
    assert until, "no Valid-Until in the served InRelease"
    assert email.utils.parsedate_to_datetime(until[1]) > datetime.datetime.now(datetime.UTC)
    assert repo.file(f"{SERVED}/dists/sevenleague").is_symlink


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/sevenleague-archive-keyring.asc", "200"),
        ("/dists/sevenleague/InRelease", "200"),
        ("/db/CURRENT", "404"),
        ("/public/dists/sevenleague/InRelease", "404"),
        ("/", "404"),
    ],
)
def test_nginx_serves_only_what_apt_needs(client, repo_address, path, code):
    got = client.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' http://{repo_address}{path}")
    assert got == code


def test_hosts_outside_the_fleet_cannot_reach_the_repository(repo_address):
    # The controller is not in the inventory, so the firewall drops it.
    with pytest.raises(OSError):
        socket.create_connection((repo_address, 80), timeout=2).close()


def publish(deb):
    """The apt_repo publish step's module, run on the repository host."""
    repo = through_ansible("sl-molecule-repo")
    return repo.ansible("aptly_publish", f"repo=sevenleague distribution=sevenleague debs={deb}", check=False)


def test_publishing_the_same_file_again_changes_nothing(repo):
    result = publish(repo_incoming(repo))
    assert result.get("changed") is False, result
    assert [p["action"] for p in result["packages"]] == ["unchanged"]


def test_a_changed_file_with_a_published_version_is_refused(repo):
    deb = repo_incoming(repo)
    rebuilt = repo.run(
        f"rm -rf /tmp/rebuild && dpkg-deb -R {deb} /tmp/rebuild && echo '# changed' >> /tmp/rebuild/usr/lib/greeter/greeter.py"
        f" && dpkg-deb --root-owner-group --build /tmp/rebuild /tmp/greeter-changed.deb"
    )
    assert rebuilt.rc == 0, rebuilt.stderr
    result = publish("/tmp/greeter-changed.deb")
    # testinfra hands back the module's result; the refusal is its message.
    assert "already published from a different file" in result.get("msg", ""), result
    assert "raise the version" in result["msg"]
    published = repo.check_output(f"sha256sum {SERVED}/pool/main/g/greeter/*.deb").split()[0]
    assert published == repo.check_output(f"sha256sum {deb}").split()[0]


def test_every_published_version_stays_installable(repo, client, greeter_version, tmp_path):
    """A rollback needs nothing rebuilt: the older version is still in the index. Published through
    the role's entry point: aptly, the controller's signature and the switch of the served indexes."""
    newer = greeter_version.replace("-", ".1-", 1)
    built = sorted((PROJECT / ".." / ".." / "build" / "debs").glob(f"greeter_{greeter_version}_*.deb"))[0]
    tree, deb = tmp_path / "tree", tmp_path / f"greeter_{newer}_all.deb"
    subprocess.run(["dpkg-deb", "-R", str(built), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {newer}", control.read_text(), flags=re.MULTILINE))
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    before = repo.check_output(f"readlink {SERVED}/dists/sevenleague")
    run = subprocess.run(
        [
            shutil.which("ansible-playbook"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(Path(__file__).parents[1] / "publish_files.yml"),
            "-e",
            json.dumps({"publish_files": [str(deb)]}),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert repo.check_output(f"readlink {SERVED}/dists/sevenleague") != before
    client.run("apt-get update -qq")
    madison = client.check_output("apt-cache madison greeter")
    assert newer in madison and greeter_version in madison
    upgrade = client.run(f"apt-get install -y -qq greeter={newer}")
    assert upgrade.rc == 0 and client.package("greeter").version == newer, upgrade.stderr
    back = client.run(f"apt-get install -y -qq --allow-downgrades greeter={greeter_version}")
    assert back.rc == 0 and client.package("greeter").version == greeter_version, back.stderr
