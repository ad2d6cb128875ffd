"""A client's journal reaches the aggregator over RELP with mutual TLS, filed under the client's
inventory name; the queue keeps messages through an aggregator outage and a client restart; the
listener refuses clients without a certificate from the fleet's CA; impstats reaches the textfile;
one host flooding gets its rate and its share of the disk, the others' lines keep arriving."""

import base64
import json
import re
import shlex
import time
import uuid
from pathlib import Path

import pytest
import testinfra

AGGREGATOR, CLIENT = "sl-molecule-rsyslog-logs", "sl-molecule-rsyslog-client"
HOSTS = (AGGREGATOR, CLIENT)
LOG_DIR = "/var/log/hosts"
CURRENT = "/etc/sevenleague/pki/current"
HOOK = "/etc/sevenleague/pki/hooks.d/60-restart-rsyslog"
PROM = "/var/lib/prometheus/node-exporter/sevenleague_rsyslog.prom"
MARKER = "/run/sevenleague-rsyslog/relp-disabled"


@pytest.fixture(scope="module")
def aggregator():
    return testinfra.get_host(f"podman://{AGGREGATOR}")


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host(f"podman://{CLIENT}")


def wait_for(check, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)
    return value


def file_text(host, path):
    return host.run(f"cat {shlex.quote(path)} 2>/dev/null").stdout


def address(host):
    return host.check_output("hostname -I").split()[0]


def main_pid(host):
    return host.check_output("systemctl show -p MainPID --value rsyslog.service")


def test_a_clients_line_arrives_under_its_inventory_name(aggregator, client):
    token = uuid.uuid4().hex
    client.check_output(f"logger -t sltest 'hello {token}'")
    path = f"{LOG_DIR}/{CLIENT}/sltest.log"
    line = wait_for(
        lambda: next((x for x in file_text(aggregator, path).splitlines() if token in x), None),
        what=f"the line in {path}",
    )
    # Filed and labelled by the inventory name, not the name the client gives itself.
    assert line.split()[1] == CLIENT and re.search(rf"sltest\[\d+\]: hello {token}$", line), line
    assert not aggregator.file(f"{LOG_DIR}/client.molecule.test").exists
    assert aggregator.file(path).user == "root" and aggregator.file(path).group == "adm"
    assert aggregator.file(path).mode == 0o640


def test_the_aggregator_files_its_own_lines_and_forwards_to_no_one(aggregator):
    token = uuid.uuid4().hex
    aggregator.check_output(f"logger -t sltest-self 'own {token}'")
    wait_for(
        lambda: token in file_text(aggregator, f"{LOG_DIR}/{AGGREGATOR}/sltest-self.log"),
        what="the aggregator's own line",
    )
    assert "omrelp" not in aggregator.file("/etc/rsyslog.d/sevenleague.conf").content_string


def test_program_names_cannot_leave_the_hosts_directory(aggregator, client):
    token = uuid.uuid4().hex
    client.check_output(f"logger -t '../../etc/evil' 'escape {token}'")
    client.check_output(f"logger -t '.hidden' 'dot {token}'")
    files = wait_for(
        lambda: (
            (found := aggregator.run(f"grep -rl {token} /var/log /etc").stdout.split())
            and len(found) == 2
            and sorted(found)
        ),
        what="both lines",
    )
    assert all(f.startswith(f"{LOG_DIR}/{CLIENT}/") for f in files), files
    assert not any(f.rsplit("/", 1)[1].startswith(".") for f in files), files


def test_the_lookup_table_maps_each_address_to_its_inventory_name(aggregator, client):
    table = json.loads(aggregator.file("/etc/sevenleague/rsyslog/hosts.json").content_string)
    assert table["nomatch"] == "" and table["type"] == "string"
    assert {row["index"]: row["value"] for row in table["table"]} == {
        address(client): CLIENT,
        address(aggregator): AGGREGATOR,
    }


def suspensions(client):
    return file_text(client, "/var/log/syslog").count(f"action 'forward-{AGGREGATOR}' suspended")


def test_nothing_is_lost_across_an_outage_and_a_client_restart(aggregator, client):
    """The aggregator stops (and its socket, or a local message would start it again); the client
    queues, restarts with its queue saved to disk, and delivers all once the aggregator is back.

    What the client had handed to the dead connection before it noticed (RELP's unacknowledged
    window) lives in memory only: a restart in that moment loses it, so the test first logs until
    the action is suspended."""
    tag = f"sl-outage-{uuid.uuid4().hex[:8]}"
    aggregator.check_output("systemctl stop syslog.socket rsyslog.service")
    try:
        before = suspensions(client)
        wait_for(
            lambda: client.run("logger -t sl-probe probe").rc == 0 and suspensions(client) > before,
            what="the forwarding action suspended",
        )
        client.check_output(f'for i in $(seq 1 200); do logger -t {tag} "n=$i"; done')
        # Debian's rules come after the forwarding action: once the last line is in the local
        # syslog, every line is in the forwarding queue.
        wait_for(
            lambda: re.search(rf"{tag}\[\d+\]: n=200$", file_text(client, "/var/log/syslog"), re.M),
            what="the lines queued",
        )
        pid = main_pid(client)
        client.check_output("systemctl restart rsyslog.service")
        assert main_pid(client) != pid
    finally:
        aggregator.check_output("systemctl start syslog.socket rsyslog.service")
    path = f"{LOG_DIR}/{CLIENT}/{tag}.log"

    def complete():
        got = [int(n) for n in re.findall(r"\bn=(\d+)\b", file_text(aggregator, path))]
        return set(got) >= set(range(1, 201)) and got

    got = wait_for(complete, timeout=90, what="all 200 lines after the outage")
    # RELP may resend what was in flight when the session broke: at most a window's worth.
    assert len(got) - 200 <= 128


def test_a_relp_action_disabled_by_a_failed_authentication_is_enabled_again(aggregator, client):
    """rsyslog disables a RELP action for good once it fails to authenticate its peer (issues
    5636, 5517): here the aggregator presents a certificate from another CA for a while. The
    client marks it, and a path unit restarts rsyslog, which then delivers again."""
    release = aggregator.check_output(f"readlink -f {CURRENT}")
    aggregator.check_output(
        f"cp -p {release}/fullchain.pem {release}/key.pem /run/ && "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
        f"-subj /CN={AGGREGATOR} -addext subjectAltName=DNS:{AGGREGATOR} "
        f"-keyout {release}/key.pem -out {release}/fullchain.pem 2>/dev/null && systemctl restart rsyslog"
    )
    pid = main_pid(client)
    try:
        wait_for(
            lambda: client.run(f"logger -t sl-trap probe; test -e {MARKER}").rc == 0,
            timeout=60,
            what="the action disabled and marked",
        )
    finally:
        aggregator.check_output(
            f"cp -p /run/fullchain.pem /run/key.pem {release}/ && "
            "rm /run/fullchain.pem /run/key.pem && systemctl restart rsyslog"
        )
    wait_for(lambda: main_pid(client) != pid, timeout=40, what="the client's rsyslog restarted")
    # A restart before the aggregator had its certificate back is disabled again, and restarted
    # again: log until a line gets through.
    tokens = []

    def delivered():
        tokens.append(uuid.uuid4().hex)
        client.check_output(f"logger -t sl-trap 'enabled again {tokens[-1]}'")
        text = file_text(aggregator, f"{LOG_DIR}/{CLIENT}/sl-trap.log")
        return any(token in text for token in tokens)

    wait_for(delivered, timeout=60, what="a line delivered after the restart")
    wait_for(lambda: not client.file(MARKER).exists, what="the marker cleared")


def _relp_probe(host, target, options=""):
    """What the RELP listener answers a RELP `open` over TLS from `host`."""
    data = "relp_version=0\nrelp_software=probe\ncommands=syslog"
    offer = f"1 open {len(data)} {data}\n"
    return host.run(
        f"(printf '%s' {shlex.quote(offer)}; sleep 2) | timeout 8 openssl s_client -quiet "
        f"-connect {target}:2514 -CAfile {CURRENT}/ca.pem {options}"
    ).stdout


@pytest.mark.parametrize(
    ("options", "speaks"),
    [
        ("-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256", True),
        ("-tls1_3", True),
        # The client side allows the old protocol and suites (SECLEVEL=0): only the listener refuses them.
        ("-tls1_1 -cipher DEFAULT@SECLEVEL=0", False),
        ("-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA@SECLEVEL=0", False),
    ],
)
def test_the_relp_listener_speaks_only_tls_12_and_13_with_aead_suites(aggregator, client, options, speaks):
    answer = _relp_probe(
        client,
        address(aggregator),
        f"-cert {CURRENT}/cert.pem -cert_chain {CURRENT}/chain.pem -key {CURRENT}/key.pem {options}",
    )
    assert ("200 OK" in answer) is speaks, answer


def test_the_relp_listener_serves_only_the_fleets_certificates(aggregator, client):
    target = address(aggregator)
    # s_client sends only the first certificate of -cert: the chain goes with -cert_chain.
    accepted = _relp_probe(
        client, target, f"-cert {CURRENT}/cert.pem -cert_chain {CURRENT}/chain.pem -key {CURRENT}/key.pem"
    )
    assert "1 rsp" in accepted and "200 OK" in accepted, accepted
    assert "rsp" not in _relp_probe(client, target)
    client.check_output(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
        f"-subj /CN={CLIENT} -addext subjectAltName=DNS:{CLIENT} "
        "-keyout /run/sl-other-ca.key -out /run/sl-other-ca.pem 2>/dev/null"
    )
    try:
        other_ca = _relp_probe(client, target, "-cert /run/sl-other-ca.pem -key /run/sl-other-ca.key")
    finally:
        client.run("rm -f /run/sl-other-ca.key /run/sl-other-ca.pem")
    assert "rsp" not in other_ca, other_ca


def test_the_statistics_reach_the_textfile(client):
    action = f'sevenleague_rsyslog_action_processed_total{{action="forward-{AGGREGATOR}"}}'
    text = wait_for(
        lambda: (t := file_text(client, PROM)) and action in t and t, timeout=20, what=f"{action} in {PROM}"
    )
    assert f'sevenleague_rsyslog_queue_size{{queue="forward-{AGGREGATOR}"}}' in text
    assert 'sevenleague_rsyslog_input_submitted_total{input="imjournal"}' in text
    stamp = next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("sevenleague_rsyslog_stats_timestamp_seconds ")
    )
    assert abs(stamp - float(client.check_output("date +%s"))) < 60
    prom = client.file(PROM)
    assert prom.user == "root" and prom.mode == 0o644


def test_the_hook_restarts_the_listener_for_the_host_certificate(aggregator):
    hook = aggregator.file(HOOK)
    assert hook.user == "root" and hook.mode == 0o755
    pid = main_pid(aggregator)
    aggregator.check_output(f"SEVENLEAGUE_PKI_NAME=openbao {HOOK}")
    assert main_pid(aggregator) == pid
    aggregator.check_output(f"SEVENLEAGUE_PKI_NAME=host {HOOK}")
    assert main_pid(aggregator) != pid
    assert aggregator.service("rsyslog").is_running


def test_the_hook_restarts_a_sender_only_for_a_disabled_action(client):
    """Senders read the certificate at each connection; a restart is only for the trap."""
    client.check_output("systemctl stop sevenleague-rsyslog-reenable.path")
    try:
        pid = main_pid(client)
        client.check_output(f"SEVENLEAGUE_PKI_NAME=host {HOOK}")
        assert main_pid(client) == pid
        client.check_output(f"mkdir -p {MARKER.rsplit('/', 1)[0]} && touch {MARKER}")
        client.check_output(f"SEVENLEAGUE_PKI_NAME=host {HOOK}")
        assert main_pid(client) != pid
        assert not client.file(MARKER).exists
    finally:
        client.check_output("systemctl start sevenleague-rsyslog-reenable.path")


def test_a_local_user_cannot_fake_rsyslogs_message_to_restart_it(aggregator, client):
    """The restart is for rsyslog's own "DISABLING action" message: the same text logged by
    another local user under rsyslog's name marks nothing, so nothing restarts rsyslog."""
    # With the path unit stopped a marker would stay, whenever it was written.
    client.check_output("systemctl stop sevenleague-rsyslog-reenable.path")
    try:
        pid = main_pid(client)
        token = uuid.uuid4().hex
        client.check_output(
            f"runuser -u nobody -- logger -t rsyslogd 'action forward-x suspended; DISABLING action {token}'"
        )
        client.check_output(f"logger -t sl-trap 'after the fake {token}'")
        # Both lines went through the client's rules, the fake one first.
        wait_for(
            lambda: (
                token in file_text(aggregator, f"{LOG_DIR}/{CLIENT}/rsyslogd.log")
                and token in file_text(aggregator, f"{LOG_DIR}/{CLIENT}/sl-trap.log")
            ),
            what="both lines forwarded",
        )
        assert not client.file(MARKER).exists
        assert main_pid(client) == pid
    finally:
        client.run(f"rm -f {MARKER}")
        client.check_output("systemctl start sevenleague-rsyslog-reenable.path")


@pytest.mark.parametrize("name", [AGGREGATOR, CLIENT])
def test_the_configuration_passes_rsyslogs_check(name):
    check = testinfra.get_host(f"podman://{name}").run("rsyslogd -N1")
    assert check.rc == 0, check.stderr


def test_the_per_host_files_rotate(aggregator, client):
    path = f"{LOG_DIR}/{CLIENT}/sl-rotate.log"
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    client.check_output(f"logger -t sl-rotate 'before rotation {first}'")
    wait_for(lambda: first in file_text(aggregator, path), what="a line in the file")
    aggregator.check_output("logrotate --force /etc/logrotate.d/sevenleague-hosts")
    assert first in file_text(aggregator, f"{path}.1")
    client.check_output(f"logger -t sl-rotate 'after rotation {second}'")
    wait_for(lambda: second in file_text(aggregator, path), what="a line in the new file")
    assert first not in file_text(aggregator, path)


def test_the_disk_guard_stops_rsyslog_below_its_threshold_and_starts_only_what_it_stopped(aggregator):
    """The guard's two branches, on the real filesystem: a threshold above its free space stops
    rsyslog (and the socket that would start it again); one far below starts it again, because the
    guard stopped it; an rsyslog stopped by someone else stays stopped."""
    guard = "/usr/local/lib/sevenleague/sevenleague-rsyslog-diskguard"
    assert aggregator.service("sevenleague-rsyslog-diskguard.timer").is_enabled
    assert aggregator.service("sevenleague-rsyslog-diskguard.timer").is_running
    # The timer's own runs (with the real threshold) stay out of the way meanwhile.
    aggregator.check_output("systemctl stop sevenleague-rsyslog-diskguard.timer")
    try:
        stop = aggregator.run(f"{guard} 100000000 {LOG_DIR} /var/spool/rsyslog")
        assert stop.rc == 0, stop.stderr
        assert "stopping rsyslog" in stop.stdout
        assert aggregator.run("systemctl is-active --quiet rsyslog.service syslog.socket").rc != 0
        start = aggregator.run(f"{guard} 1 {LOG_DIR} /var/spool/rsyslog")
        assert start.rc == 0 and "starting rsyslog again" in start.stdout, start.stdout + start.stderr
        assert aggregator.service("rsyslog").is_running
        aggregator.check_output("systemctl stop syslog.socket rsyslog.service")
        assert aggregator.run(f"{guard} 1 {LOG_DIR}").stdout == ""
        assert not aggregator.service("rsyslog").is_running
    finally:
        aggregator.check_output("systemctl start syslog.socket rsyslog.service sevenleague-rsyslog-diskguard.timer")


SENDER = Path(__file__).with_name("relp_send.py")
RATE = 128 * 1024  # rsyslog_aggregator_host_rate_kib in molecule.yml, in bytes
GUARD = "/usr/local/lib/sevenleague/sevenleague-rsyslog-diskguard"


def install_sender(host):
    encoded = base64.b64encode(SENDER.read_bytes()).decode()
    host.check_output(f"echo {encoded} | base64 -d > /run/sl-relp-send.py")


def relp_send(target, tag, lines, started=""):
    """The command that sends `lines` lines under `tag` over RELP to `target`, with the host's certificate."""
    return f"python3 /run/sl-relp-send.py {target} 2514 {AGGREGATOR} {CURRENT} {tag} {lines} {started}"


def numbers(host, path):
    return {int(n) for n in re.findall(r"\bn=(\d+) ", file_text(host, path))}


def test_one_host_flooding_neither_slows_nor_stops_the_others(aggregator, client):
    """The client floods the RELP port as fast as the aggregator acknowledges, with its own
    certificate, as a rooted host can. Meanwhile another sender's lines (the aggregator's own
    address, so another source) all arrive; the flood gets no more than its rate, and loses
    nothing: it waits in the flooder."""
    lines, target = 4500, address(aggregator)
    flood, fair = f"sl-flood-{uuid.uuid4().hex[:8]}", f"sl-fair-{uuid.uuid4().hex[:8]}"
    install_sender(client)
    install_sender(aggregator)
    client.check_output(
        f"systemd-run --unit {flood} --collect /bin/sh -c "
        + shlex.quote(f"{relp_send(target, flood, lines, f'/run/{flood}.started')} > /run/{flood}.json")
    )
    try:
        wait_for(lambda: client.file(f"/run/{flood}.started").exists, what="the flood started")
        aggregator.check_output(relp_send(target, fair, 50))
        path = f"{LOG_DIR}/{AGGREGATOR}/{fair}.log"
        wait_for(lambda: numbers(aggregator, path) == set(range(50)), timeout=15, what="the other sender's lines")
        assert client.run(f"systemctl is-active --quiet {flood}").rc == 0, "the flood ended before they arrived"
        result = json.loads(
            wait_for(lambda: file_text(client, f"/run/{flood}.json").strip(), timeout=120, what="the flood's end")
        )
    finally:
        client.run(f"systemctl stop {flood}; rm -f /run/{flood}.*")
    # nftables' bucket holds the rate plus the burst (two seconds' worth here) and refills at the
    # rate; TLS, TCP and IP headers come on top of the RELP frames counted here. Limited, the flood
    # takes some 7 s; unlimited, about a second on a busy machine: far over this bound.
    assert result["bytes"] >= lines * 200, result
    assert result["bytes"] <= 1.5 * RATE * (2 + result["seconds"]), result
    path = f"{LOG_DIR}/{CLIENT}/{flood}.log"
    wait_for(lambda: numbers(aggregator, path) == set(range(lines)), what="every line of the flood")


def share_drops(aggregator):
    chain = aggregator.check_output("nft list chain inet sevenleague_rsyslog input")
    return int(re.search(r"saddr @over_share4 counter packets (\d+)", chain).group(1))


def test_a_host_over_its_share_of_the_disk_is_refused_alone_until_it_is_below(aggregator, client):
    """The guard, run with a share just above both hosts' files, finds the client over it
    (a file standing for a flood's output): the client's RELP packets are dropped, the other
    sender's lines arrive. Below its share again, the client is let back and delivers what it kept."""
    padding, table = f"{LOG_DIR}/{CLIENT}/sl-share-padding.log", "/etc/sevenleague/rsyslog/hosts.json"
    install_sender(aggregator)
    aggregator.check_output("systemctl stop sevenleague-rsyslog-diskguard.timer")
    try:
        # Above what both hosts have, so that the padding alone puts the client over it.
        share = 1 + max(int(aggregator.check_output(f"du -s -m {LOG_DIR}/{name}").split()[0]) for name in HOSTS)
        aggregator.check_output(f"head -c {(share + 2) << 20} /dev/zero > {padding}")
        out = aggregator.check_output(f"{GUARD} -s {share} -t {table} 1 {LOG_DIR}")
        assert f"{CLIENT} ({address(client)})" in out and "more than its share" in out, out
        assert AGGREGATOR not in out, out
        listed = aggregator.check_output("nft list set inet sevenleague_rsyslog over_share4")
        assert address(client) in listed and address(aggregator) not in listed, listed
        token, fair = uuid.uuid4().hex, f"sl-fair-{uuid.uuid4().hex[:8]}"
        drops = share_drops(aggregator)
        client.check_output(f"logger -t sl-share 'kept {token}'")
        wait_for(lambda: share_drops(aggregator) > drops, what="the client's packets dropped")
        aggregator.check_output(relp_send(address(aggregator), fair, 20))
        wait_for(
            lambda: numbers(aggregator, f"{LOG_DIR}/{AGGREGATOR}/{fair}.log") == set(range(20)),
            timeout=15,
            what="the other sender's lines",
        )
        assert token not in file_text(aggregator, f"{LOG_DIR}/{CLIENT}/sl-share.log")
        aggregator.check_output(f"rm {padding}")
        out = aggregator.check_output(f"{GUARD} -s {share} -t {table} 1 {LOG_DIR}")
        assert f"{CLIENT} ({address(client)})" in out and "accepting its RELP packets again" in out, out
        wait_for(
            lambda: token in file_text(aggregator, f"{LOG_DIR}/{CLIENT}/sl-share.log"),
            timeout=60,
            what="the client's kept line",
        )
    finally:
        aggregator.run(f"rm -f {padding}")
        aggregator.run(f"nft delete element inet sevenleague_rsyslog over_share4 '{{ {address(client)} }}'")
        aggregator.check_output("systemctl start sevenleague-rsyslog-diskguard.timer")
