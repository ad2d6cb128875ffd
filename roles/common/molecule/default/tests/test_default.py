"""What a user relies on after the common role: checked from inside the host
and, for the firewall and sshd, from the controller across the network."""

import ipaddress
import socket
import subprocess

import pytest

# Commands go straight to the containers through podman, not through one
# `ansible` process per command (Molecule's default for testinfra), which made
# this step minutes long.
testinfra_hosts = ["podman://sl-molecule-common", "podman://sl-molecule-common12"]


@pytest.fixture(scope="module")
def address(host):
    """The container's address on the podman network, as the controller sees it."""
    for addr in host.interface("eth0").addresses:
        if ipaddress.ip_address(addr).version == 4:
            return addr
    pytest.fail("eth0 has no IPv4 address")


@pytest.fixture(scope="module")
def listeners(host):
    """Plain TCP listeners on 8081-8083, so a refused connection is the firewall's doing."""
    ports = (8081, 8082, 8083)
    for port in ports:
        host.run(f"systemctl stop probe-{port}.service")
        cmd = host.run(
            f"systemd-run --unit probe-{port} --property=Type=exec "
            f"/usr/bin/python3 -m http.server --bind 0.0.0.0 {port}"
        )
        assert cmd.rc == 0, cmd.stderr
    for port in ports:
        assert (
            host.run(
                f"for i in $(seq 50); do ss -Htln 'sport = :{port}' | grep -q . && exit 0; sleep 0.1; done; exit 1"
            ).rc
            == 0
        ), f"nothing listens on {port}"
    yield ports
    for port in ports:
        host.run(f"systemctl stop probe-{port}.service")


def admits(source, address):
    """Whether an nft set element (address, prefix or first-last range) holds the address."""
    address = ipaddress.ip_address(address)
    if "-" in source:
        first, last = (ipaddress.ip_address(a.strip()) for a in source.split("-"))
        return first <= address <= last
    return address in ipaddress.ip_network(source)


def reachable(address, port, timeout=2.0):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_firewall_is_loaded_with_a_drop_policy(host):
    ruleset = host.run("nft list chain inet sevenleague input")
    assert ruleset.rc == 0, ruleset.stderr
    assert "policy drop" in ruleset.stdout
    assert host.service("nftables").is_enabled


def test_open_port_is_reachable(address, listeners):
    assert reachable(address, 8082)


def test_port_without_a_rule_is_refused(host, address, listeners):
    # The service answers locally, so only the firewall stops the controller.
    assert host.run("curl -fsS -o /dev/null http://127.0.0.1:8083/").rc == 0
    assert not reachable(address, 8083)


def test_role_rule_set_admits_only_its_source_group(host, address, listeners):
    chain = host.run("nft list chain inet sevenleague roles").stdout
    rule = next(line for line in chain.splitlines() if "probe-monitoring" in line)
    # Both scenario hosts are in the group; nft may merge their addresses into a prefix or range.
    sources = rule.split("ip saddr", 1)[1].split("tcp dport")[0].strip(" {}").split(", ")
    assert any(admits(source, address) for source in sources), rule
    # The controller is not in the monitoring group.
    assert not reachable(address, 8081)


def test_rule_set_files_are_private(host):
    f = host.file("/etc/nftables.d/probe.nft")
    assert f.user == "root" and f.mode == 0o640


def test_sshd_effective_settings(host):
    effective = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line)
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitrootlogin"] == "without-password"
    assert effective["x11forwarding"] == "no"
    assert effective["allowtcpforwarding"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["maxauthtries"] == "3"


def test_sshd_prefers_the_post_quantum_key_exchange_of_its_release(host):
    """OpenSSH 10 (Debian 13) offers ML-KEM first; 9.2 (Debian 12) sntrup761."""
    kex = host.check_output("sshd -T | awk '$1 == \"kexalgorithms\" {print $2}'").split(",")
    first = {"trixie": "mlkem768x25519-sha256", "bookworm": "sntrup761x25519-sha512@openssh.com"}
    assert kex[0] == first[host.system_info.codename]
    assert not any("sha1" in k or "nistp" in k for k in kex), kex


def test_sshd_offers_no_password_login(address):
    """A client that only knows a password is turned away before it may try one."""
    result = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            f"root@{address}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr


def test_chrony_runs_and_answers(host):
    assert host.service("chrony").is_running
    assert host.service("chrony").is_enabled
    assert host.run("chronyc -n tracking").rc == 0


def test_journal_is_persistent(host):
    assert host.file("/var/log/journal").is_directory
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert host.file(f"/var/log/journal/{machine_id}").is_directory
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=512M" in config


def test_apt_knows_updates_and_security_of_the_hosts_release(host):
    release = host.system_info.codename
    assert release in ("bookworm", "trixie")
    policy = host.check_output("apt-cache policy")
    assert f"{release}-security" in policy
    assert f"{release}-updates" in policy
    assert not host.file("/etc/apt/sources.list").exists


def test_unattended_upgrades_take_security_only(host):
    dump = host.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    patterns = [line for line in dump.splitlines() if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert patterns, dump
    assert all("Debian-Security" in line for line in patterns), patterns
    assert host.service("apt-daily-upgrade.timer").is_enabled


def test_sysctl_file_is_written(host):
    conf = host.file("/etc/sysctl.d/90-sevenleague.conf")
    assert conf.contains("net.ipv4.tcp_syncookies = 1")


def test_the_apt_module_can_run_on_a_host_that_started_without_python3_apt(host):
    # prepare.yml purged python3-apt; the role brought it back before its first apt task.
    assert host.package("python3-apt").is_installed
    assert host.run("python3 -c 'import apt_pkg'").rc == 0
