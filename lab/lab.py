#!/usr/bin/env python3
"""The sevenleague lab: podman containers that act as Debian hosts.

    lab.py images   build the base and host images of every release if missing
    lab.py up       images, network, one container per inventory host, SSH key
    lab.py down     remove the lab's containers and network, nothing else
    lab.py status   what is running

Hosts, addresses, each host's Debian release (`lab_release`, default
trixie), its image (`lab_image: bare` starts it without Python, for the
pyinfra bootstrap) and the subnet come from the lab inventory (every inventory file in
inventories/lab, as Ansible reads the directory), so the inventory is the
only list of lab hosts.  Every step checks before it acts: `up` on a running
lab changes nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from images import IMAGES, build_bare_image, build_images, host_image
from podman_cli import DEFAULT_RELEASE, LABEL, RELEASES, ROOT, STATE, exists, log, podman

INVENTORY = ROOT / "inventories" / "lab"
SSH_KEY = STATE / "ssh" / "id_ed25519"
KNOWN_HOSTS = STATE / "ssh" / "known_hosts"
SSH_CONFIG = STATE / "ssh" / "config"
# ansible.cfg's fact cache (fact_caching_connection).
FACT_CACHE = ROOT / ".cache" / "facts"
# The lab CA's root key passphrase, and the one that encrypts OpenBao's unseal
# keys; a real site keeps both in ansible-vault.
CA_PASSPHRASE = STATE / "ca-passphrase"
OPENBAO_PASSPHRASE = STATE / "openbao-passphrase"
# The lab's three holders of OpenBao's unseal key shares (any two unseal).
UNSEAL_HOLDERS = ("ops-a", "ops-b", "ops-c")
# The openbao role's encrypted unseal keys: they belong to the containers'
# OpenBao, so they go with the containers.
OPENBAO_SECRETS = INVENTORY / ".openbao"
# The controller's record of the lab repository (its URL and key) and the
# key that signs it (apt_repo role): a new lab has a new repository and key.
APT_PINS = INVENTORY / ".apt"
# NET_ADMIN so nftables works in the container's own network namespace,
# NET_RAW for ping.  Never SYS_TIME: the clock belongs to the machine.
CAPS = ["NET_ADMIN", "NET_RAW"]
# systemd 257 (Debian 13) keeps CAP_SYS_ADMIN across the switch to a unit's
# User= to install its seccomp filters afterwards; without the capability
# every hardened unit with User= (OpenBao, node_exporter, the apps) fails with
# 217/USER (systemd issue 34565). Real hosts have it; Debian 12 does not need it.
RELEASE_CAPS = {"trixie": ["SYS_ADMIN"]}


def inventory_files() -> list[Path]:
    """The inventory files Ansible reads from the lab's inventory directory, in its order."""
    return sorted(p for p in INVENTORY.iterdir() if p.is_file() and p.suffix in (".yml", ".yaml"))


def lab_config(extra=()) -> dict:
    """Read hosts, their releases and the network from the lab inventory: every inventory file
    of inventories/lab (hosts.yml, and any file added next to it), then `extra` files."""
    lab_vars = yaml.safe_load((INVENTORY / "group_vars" / "all" / "lab.yml").read_text())
    hosts: dict[str, str] = {}
    releases: dict[str, str] = {}
    images: dict[str, str] = {}
    origin: dict[str, Path] = {}

    def walk(group: dict, source: Path) -> None:
        for name, hvars in (group.get("hosts") or {}).items():
            hosts[name] = (hvars or {}).get("ansible_host", name)
            releases[name] = (hvars or {}).get("lab_release", lab_vars.get("lab_release", DEFAULT_RELEASE))
            images[name] = (hvars or {}).get("lab_image", IMAGES[0])
            origin[name] = source
        for child in (group.get("children") or {}).values():
            walk(child or {}, source)

    for hosts_file in (*inventory_files(), *map(Path, extra)):
        if not hosts_file.is_file():
            sys.exit(f"lab: {hosts_file} does not exist")
        inv = yaml.safe_load(hosts_file.read_text()) or {}
        walk(inv.get("all") or {}, hosts_file)
    taken: dict[str, str] = {}
    for name, addr in hosts.items():
        if addr in taken:
            sys.exit(f"lab: {name} and {taken[addr]} both have ansible_host {addr}: give each its own address")
        taken[addr] = name
    subnet = ipaddress.ip_network(lab_vars["lab_subnet"])
    for name, addr in hosts.items():
        if ipaddress.ip_address(addr) not in subnet:
            sys.exit(f"lab: {name} has ansible_host {addr}, outside lab_subnet {subnet}: fix {origin[name]}")
        if releases[name] not in RELEASES:
            sys.exit(
                f"lab: {name} has lab_release {releases[name]!r}; the lab builds "
                f"{' and '.join(RELEASES)}: fix {origin[name]}"
            )
        if images[name] not in IMAGES:
            sys.exit(f"lab: {name} has lab_image {images[name]!r}, not one of {', '.join(IMAGES)}: fix {origin[name]}")
    return {
        "hosts": hosts,
        "releases": releases,
        "images": images,
        "subnet": str(subnet),
        "network": lab_vars["lab_network"],
    }


def container_name(host: str) -> str:
    return "sl-" + host.split(".")[0]


def ensure_ssh_key() -> None:
    if SSH_KEY.exists():
        return
    SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sevenleague-lab", "-f", str(SSH_KEY)], check=True
    )
    log(f"generated the lab SSH key {SSH_KEY.relative_to(ROOT)}")


def ensure_passphrase(path: Path, what: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    log(f"generated the lab {what} passphrase {path.relative_to(ROOT)}")


def ensure_network(cfg: dict) -> None:
    if exists("network", cfg["network"]):
        out = podman("network", "inspect", cfg["network"], "--format", "{{ range .Subnets }}{{ .Subnet }} {{ end }}")
        if cfg["subnet"] not in out.stdout.split():
            sys.exit(
                f"lab: network {cfg['network']} exists with subnet {out.stdout.strip()}, "
                f"not {cfg['subnet']}: run `make lab-down` first"
            )
        return
    log(f"creating network {cfg['network']} ({cfg['subnet']})")
    podman("network", "create", "--subnet", cfg["subnet"], "--label", LABEL, cfg["network"])


def wait_for_ssh(host: str, addr: str, timeout: int = 60) -> None:
    deadline = time.monotonic() + timeout
    cmd = [
        "ssh",
        "-i",
        str(SSH_KEY),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={KNOWN_HOSTS}",
        f"root@{addr}",
        "true",
    ]
    while time.monotonic() < deadline:
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return
        time.sleep(1)
    sys.exit(f"lab: {host} ({addr}) did not accept SSH within {timeout}s: see `podman logs {container_name(host)}`")


def host_key(name: str, timeout: int = 30) -> str:
    """The container's SSH host key, read through podman: no trust on first use."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = podman("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False)
        if out.returncode == 0 and out.stdout.strip():
            return " ".join(out.stdout.split()[:2])
        time.sleep(0.5)
    sys.exit(f"lab: {name} has no SSH host key after {timeout}s: see `podman logs {name}`")


def write_known_hosts(cfg: dict) -> None:
    lines = []
    for host, addr in cfg["hosts"].items():
        key = host_key(container_name(host))
        lines.append(f"{addr},{host},{host.split('.')[0]} {key}")
    KNOWN_HOSTS.write_text("\n".join(lines) + "\n")


def up(cfg: dict) -> None:
    build_images()
    ensure_ssh_key()
    ensure_passphrase(CA_PASSPHRASE, "CA")
    ensure_passphrase(OPENBAO_PASSPHRASE, "OpenBao")
    for holder in UNSEAL_HOLDERS:
        ensure_passphrase(STATE / f"unseal-{holder}-passphrase", f"unseal holder {holder}")
    ensure_network(cfg)
    pubkey = SSH_KEY.with_suffix(".pub").read_text()
    for host, addr in cfg["hosts"].items():
        name = container_name(host)
        if exists("container", name):
            state = podman("inspect", name, "--format", "{{ .State.Running }}").stdout.strip()
            if state != "true":
                log(f"starting {name}")
                podman("start", name)
        else:
            release = cfg["releases"][host]
            bare = cfg["images"][host] == "bare"
            image = build_bare_image(release) if bare else host_image(release)
            log(f"creating {name} ({host}, {addr}, Debian {release}{', bare: no Python' if bare else ''})")
            podman(
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                host,
                "--network",
                cfg["network"],
                "--ip",
                addr,
                "--label",
                LABEL,
                *[f"--cap-add={c}" for c in CAPS + RELEASE_CAPS.get(release, [])],
                "--systemd",
                "always",
                "--stop-signal",
                "SIGRTMIN+3",
                image,
                "/sbin/init",
            )
        authorize_key(name, pubkey)
    write_known_hosts(cfg)
    for host, addr in cfg["hosts"].items():
        wait_for_ssh(host, addr)
    write_ssh_config(cfg)
    log(
        f"{len(cfg['hosts'])} hosts up; try `ansible all -m ping` or "
        f"`ssh -F {SSH_CONFIG.relative_to(ROOT)} {next(iter(cfg['hosts'])).split('.')[0]}`"
    )


def authorize_key(name: str, pubkey: str) -> None:
    """Make the lab key the container's only root key; unchanged if it already is."""
    podman(
        "exec",
        "-i",
        name,
        "sh",
        "-c",
        "install -d -m 0700 /root/.ssh && f=/root/.ssh/authorized_keys && "
        't=$(mktemp /root/.ssh/.ak.XXXXXX) && cat > "$t" && '
        'if cmp -s "$t" "$f"; then rm -f "$t"; '
        'else chmod 0600 "$t" && mv "$t" "$f"; fi',
        input=pubkey,
    )


def write_ssh_config(cfg: dict) -> None:
    """An ssh_config for people and tests: `ssh -F .lab/ssh/config app1`."""
    lines = ["# Written by lab/lab.py up; the lab's hosts by short and full name."]
    for host, addr in cfg["hosts"].items():
        lines += [
            f"Host {host.split('.')[0]} {host} {addr}",
            f"    HostName {addr}",
            "    User root",
            f"    IdentityFile {SSH_KEY}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {KNOWN_HOSTS}",
            "    StrictHostKeyChecking yes",
            "    ControlMaster auto",
            "    ControlPath /tmp/sl-lab-%C",
            "    ControlPersist 60s",
            "",
        ]
    SSH_CONFIG.write_text("\n".join(lines))


def down(cfg: dict) -> None:
    # By label, so a host dropped from the inventory since `up` goes too.
    labelled = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{ .Names }}").stdout.split()
    # Any other container on the lab's network would keep the network from being removed.
    attached = (
        podman("ps", "-a", "--filter", f"network={cfg['network']}", "--format", "{{ .Names }}").stdout.split()
        if exists("network", cfg["network"])
        else []
    )
    names = sorted(
        set(labelled)
        | set(attached)
        | {container_name(h) for h in cfg["hosts"] if exists("container", container_name(h))}
    )
    # Hosts added from another inventory file (`up -i`) are known here by their containers only.
    removed = set(cfg["hosts"])
    for name in names:
        hostname = podman("inspect", name, "--format", "{{ .Config.Hostname }}", check=False).stdout.strip()
        removed.add(hostname)
        log(f"removing {name}")
        podman("rm", "-f", "-t", "5", name)
    # Facts cached from the removed containers would describe hosts that are gone.
    # (ansible-core names them <schema>_<host>.)
    cached = [p for h in removed if h for p in FACT_CACHE.glob(f"*{h}") if p.name.split("_", 1)[-1] == h]
    for path in (SSH_CONFIG, KNOWN_HOSTS, *cached):
        if path.exists():
            path.unlink()
    if OPENBAO_SECRETS.exists():
        log(f"removing {OPENBAO_SECRETS.relative_to(ROOT)} (the removed OpenBao's keys)")
        shutil.rmtree(OPENBAO_SECRETS)
    if APT_PINS.exists():
        log(f"removing {APT_PINS.relative_to(ROOT)} (the removed repository's record and signing key)")
        shutil.rmtree(APT_PINS)
    if exists("network", cfg["network"]):
        log(f"removing network {cfg['network']}")
        podman("network", "rm", cfg["network"])


def status(cfg: dict) -> None:
    for host, addr in cfg["hosts"].items():
        name = container_name(host)
        state = "absent"
        if exists("container", name):
            state = podman("inspect", name, "--format", "{{ .State.Status }}").stdout.strip()
        print(f"{host:32} {addr:15} {name:12} {cfg['releases'][host]:9} {state}")


def main() -> None:
    if os.geteuid() != 0:
        # Rootless podman puts containers where the controller cannot reach their addresses.
        sys.exit(
            "lab: run as root: the lab's containers need rootful podman so that their "
            "addresses are reachable from this machine"
        )
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["images", "up", "down", "status"])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the images even if they exist")
    args = parser.parse_args()
    if args.command == "images":
        build_images(args.rebuild)
        return
    cfg = lab_config()
    {"up": up, "down": down, "status": status}[args.command](cfg)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()[-1:] if isinstance(exc.stderr, str) else []
        sys.exit(f"lab: `{' '.join(map(str, exc.cmd))}` failed ({exc.returncode}) {' '.join(detail)}")
