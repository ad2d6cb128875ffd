"""The repository host and a client after converge: the client installs from
the signed repository, publishing is safe, and only the fleet reaches it."""

import os
import socket

import pytest
import testinfra

BASEDIR = "/srv/apt"
PUBLIC = f"{BASEDIR}/public"
GNUPGHOME = "/var/lib/apt-repo/gnupg"


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


def test_indexes_are_signed_by_the_published_key(repo):
    check = repo.run(
        f"gpg --dearmor < {PUBLIC}/sevenleague-archive-keyring.asc > /tmp/keyring.gpg && "
        f"gpg --batch --no-default-keyring --keyring /tmp/keyring.gpg --verify {PUBLIC}/dists/sevenleague/InRelease"
    )
    assert check.rc == 0, check.stderr


def test_private_key_stays_in_its_root_only_home(repo):
    home = repo.file(GNUPGHOME)
    assert home.user == "root" and home.mode == 0o700
    public = repo.check_output(f"gpg --batch --show-keys --with-colons {PUBLIC}/sevenleague-archive-keyring.asc")
    assert public.startswith("pub:") and "\nsec:" not in public
    served = repo.run(f"grep -rl 'PRIVATE KEY' {BASEDIR}")
    assert served.stdout == ""


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
    fingerprint = repo.ansible("setup", "filter=ansible_local")["ansible_facts"]["ansible_local"]["apt_repo"][
        "fingerprint"
    ]
    return repo.ansible(
        "aptly_publish",
        f"repo=sevenleague distribution=sevenleague gpg_key={fingerprint} gnupghome={GNUPGHOME} debs={deb}",
        check=False,
    )


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
    published = repo.check_output(f"sha256sum {PUBLIC}/pool/main/g/greeter/*.deb").split()[0]
    assert published == repo.check_output(f"sha256sum {deb}").split()[0]


def test_every_published_version_stays_installable(repo, client, greeter_version):
    """A rollback needs nothing rebuilt: the older version is still in the index."""
    newer = greeter_version.replace("-", ".1-", 1)
    rebuilt = repo.run(
        f"rm -rf /tmp/newer && dpkg-deb -R {repo_incoming(repo)} /tmp/newer"
        f" && sed -i 's/^Version: .*/Version: {newer}/' /tmp/newer/DEBIAN/control"
        f" && dpkg-deb --root-owner-group --build /tmp/newer /tmp/greeter_{newer}_all.deb"
    )
    assert rebuilt.rc == 0, rebuilt.stderr
    result = publish(f"/tmp/greeter_{newer}_all.deb")
    assert result.get("changed") is True and result["snapshot"] != result["previous_snapshot"], result
    assert result["previous_snapshot"] in repo.check_output("aptly snapshot list -raw").split()
    client.run("apt-get update -qq")
    madison = client.check_output("apt-cache madison greeter")
    assert newer in madison and greeter_version in madison
    upgrade = client.run(f"apt-get install -y -qq greeter={newer}")
    assert upgrade.rc == 0 and client.package("greeter").version == newer, upgrade.stderr
    back = client.run(f"apt-get install -y -qq --allow-downgrades greeter={greeter_version}")
    assert back.rc == 0 and client.package("greeter").version == greeter_version, back.stderr
