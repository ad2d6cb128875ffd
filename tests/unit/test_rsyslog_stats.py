"""The rsyslog role's impstats converter (sevenleague_host.rsyslog_stats, the sevenleague-rsyslog-stats command), fed
impstats lines as rsyslog 8.2302 (Debian 12) and 8.2504 (Debian 13) write them."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sevenleague_host import rsyslog_stats as stats

ROOT = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, "-m", "sevenleague_host.rsyslog_stats"]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(str(ROOT / f) for f in ("collections", "packaging/sevenleague-host")),
}

# A client on Debian 12 (rsyslog 8.2302): one forwarding action with its disk-assisted queue,
# the Debian rules' actions, and the statistics' own action. The forwarding action's and its
# queues' failure counters are raised from the recorded zeros, to tell the fields apart.
BOOKWORM_CLIENT = """\
{ "name": "global", "origin": "dynstats", "values": { } }
{ "name": "global", "origin": "percentile", "values": { } }
{ "name": "imuxsock", "origin": "imuxsock", "submitted": 65, "ratelimit.discarded": 0, "ratelimit.numratelimiters": 0 }
{ "name": "sevenleague-stats", "origin": "core.action", "processed": 737, "failed": 0, "suspended": 0, "suspended.duration": 0, "resumed": 0 }
{ "name": "forward-logs1.sevenleague.test", "origin": "core.action", "processed": 65, "failed": 2, "suspended": 3, "suspended.duration": 90, "resumed": 2 }
{ "name": "action-2-builtin:omfile", "origin": "core.action", "processed": 65, "failed": 0, "suspended": 0, "suspended.duration": 0, "resumed": 0 }
{ "name": "action-8-builtin:omusrmsg", "origin": "core.action", "processed": 0, "failed": 0, "suspended": 0, "suspended.duration": 0, "resumed": 0 }
{ "name": "resource-usage", "origin": "impstats", "utime": 18905, "stime": 15576, "maxrss": 10460, "minflt": 791, "majflt": 0, "inblock": 0, "oublock": 400, "nvcsw": 528, "nivcsw": 359, "openfiles": 11 }
{ "name": "forward-logs1.sevenleague.test queue[DA]", "origin": "core.queue", "size": 1200, "enqueued": 1200, "full": 0, "discarded.full": 0, "discarded.nf": 0, "maxqsize": 1200 }
{ "name": "forward-logs1.sevenleague.test queue", "origin": "core.queue", "size": 53, "enqueued": 64, "full": 1, "discarded.full": 4, "discarded.nf": 3, "maxqsize": 80000 }
{ "name": "main Q", "origin": "core.queue", "size": 14, "enqueued": 816, "full": 0, "discarded.full": 0, "discarded.nf": 0, "maxqsize": 16 }
"""

# An aggregator on Debian 13 (rsyslog 8.2504): the RELP input, the receiving ruleset's queue and
# the per-host files' dynafile cache.
TRIXIE_AGGREGATOR = """\
{ "name": "global", "origin": "dynstats", "values": { } }
{ "name": "imuxsock", "origin": "imuxsock", "submitted": 41, "ratelimit.discarded": 0, "ratelimit.numratelimiters": 0 }
{ "name": "dynafile cache sevenleague-host-file", "origin": "omfile", "requests": 145, "level0": 101, "missed": 7, "evicted": 0, "maxused": 7, "closetimeouts": 5 }
{ "name": "sevenleague-hosts", "origin": "core.action", "processed": 145, "failed": 0, "suspended": 0, "suspended.duration": 0, "resumed": 0 }
{ "name": "imrelp(2514)", "origin": "imrelp", "submitted": 104 }
{ "name": "resource-usage", "origin": "impstats", "utime": 57853, "stime": 57853, "maxrss": 14100, "minflt": 1617, "majflt": 4, "inblock": 232, "oublock": 488, "nvcsw": 478, "nivcsw": 320, "openfiles": 18 }
{ "name": "sevenleague-remote[DA]", "origin": "core.queue", "size": 0, "enqueued": 0, "full": 0, "discarded.full": 0, "discarded.nf": 0, "maxqsize": 0 }
{ "name": "sevenleague-remote", "origin": "core.queue", "size": 0, "enqueued": 104, "full": 0, "discarded.full": 0, "discarded.nf": 0, "maxqsize": 12 }
{ "name": "main Q", "origin": "core.queue", "size": 19, "enqueued": 649, "full": 0, "discarded.full": 0, "discarded.nf": 0, "maxqsize": 21 }
"""


def samples(text):
    """name -> value of every sample line of a textfile."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def converted(text, now=1_700_000_000.0):
    s = stats.Stats()
    for line in text.splitlines():
        s.update(stats.parse(line))
    return s.render(now)


def test_a_client_on_debian_12():
    got = samples(converted(BOOKWORM_CLIENT))
    fwd = 'action="forward-logs1.sevenleague.test"'
    assert got[f"sevenleague_rsyslog_action_processed_total{{{fwd}}}"] == 65
    assert got[f"sevenleague_rsyslog_action_failed_total{{{fwd}}}"] == 2
    assert got[f"sevenleague_rsyslog_action_suspended_total{{{fwd}}}"] == 3
    assert got[f"sevenleague_rsyslog_action_suspended_seconds_total{{{fwd}}}"] == 90
    assert got[f"sevenleague_rsyslog_action_resumed_total{{{fwd}}}"] == 2
    assert got['sevenleague_rsyslog_input_submitted_total{input="imuxsock"}'] == 65
    # The action's queue carries the action's name; its disk part the same with [DA].
    queue = 'queue="forward-logs1.sevenleague.test"'
    assert got[f"sevenleague_rsyslog_queue_size{{{queue}}}"] == 53
    assert got[f"sevenleague_rsyslog_queue_max_size{{{queue}}}"] == 80000
    assert got[f"sevenleague_rsyslog_queue_full_total{{{queue}}}"] == 1
    assert got[f"sevenleague_rsyslog_queue_discarded_total{{{queue}}}"] == 7
    assert got['sevenleague_rsyslog_queue_size{queue="forward-logs1.sevenleague.test[DA]"}'] == 1200
    assert got['sevenleague_rsyslog_queue_size{queue="main Q"}'] == 14
    assert got["sevenleague_rsyslog_stats_timestamp_seconds"] == 1_700_000_000


def test_an_aggregator_on_debian_13():
    got = samples(converted(TRIXIE_AGGREGATOR))
    assert got['sevenleague_rsyslog_input_submitted_total{input="imrelp(2514)"}'] == 104
    assert got['sevenleague_rsyslog_queue_size{queue="sevenleague-remote[DA]"}'] == 0
    assert got['sevenleague_rsyslog_queue_max_size{queue="sevenleague-remote"}'] == 12
    assert got['sevenleague_rsyslog_action_processed_total{action="sevenleague-hosts"}'] == 145


def test_only_inputs_actions_and_queues_become_series():
    names = {name.split("{")[0] for name in samples(converted(BOOKWORM_CLIENT + TRIXIE_AGGREGATOR))}
    assert names == {
        "sevenleague_rsyslog_input_submitted_total",
        "sevenleague_rsyslog_action_processed_total",
        "sevenleague_rsyslog_action_failed_total",
        "sevenleague_rsyslog_action_suspended_total",
        "sevenleague_rsyslog_action_suspended_seconds_total",
        "sevenleague_rsyslog_action_resumed_total",
        "sevenleague_rsyslog_queue_size",
        "sevenleague_rsyslog_queue_max_size",
        "sevenleague_rsyslog_queue_full_total",
        "sevenleague_rsyslog_queue_discarded_total",
        "sevenleague_rsyslog_stats_timestamp_seconds",
    }
    labels = {name.split("{")[1].split("=")[0] for name in samples(converted(TRIXIE_AGGREGATOR)) if "{" in name}
    assert labels == {"input", "action", "queue"}
    text = converted(TRIXIE_AGGREGATOR)
    assert "resource-usage" not in text and "dynafile" not in text and "dynstats" not in text


def test_every_metric_is_typed_and_counters_end_in_total():
    text = converted(BOOKWORM_CLIENT)
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    for name, kind in types.items():
        assert (kind == "counter") == name.endswith("_total"), name
    for name in samples(text):
        assert name.split("{")[0] in types


def test_later_records_replace_earlier_ones():
    s = stats.Stats()
    s.update(stats.parse('{ "name": "imuxsock", "origin": "imuxsock", "submitted": 5 }'))
    s.update(stats.parse('{ "name": "imuxsock", "origin": "imuxsock", "submitted": 9 }'))
    assert samples(s.render(0))['sevenleague_rsyslog_input_submitted_total{input="imuxsock"}'] == 9


def test_label_values_are_escaped():
    s = stats.Stats()
    s.update({"name": 'odd "name"\\with\nnewline', "origin": "core.action", "processed": 1})
    line = next(
        line for line in s.render(0).splitlines() if line.startswith("sevenleague_rsyslog_action_processed_total")
    )
    assert line == 'sevenleague_rsyslog_action_processed_total{action="odd \\"name\\"\\\\with\\nnewline"} 1'


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        "{ broken",
        '["a", "list"]',
        '{ "origin": "core.action", "processed": 1 }',
        '{ "name": "x", "origin": "core.action", "processed": true }',
    ],
)
def test_anything_else_is_ignored(line):
    s = stats.Stats()
    s.update(stats.parse(line))
    assert samples(s.render(0)) == {"sevenleague_rsyslog_stats_timestamp_seconds": 0}


def test_a_whole_syslog_line_is_read_too():
    record = stats.parse(
        '2026-12-02T00:40:35+00:00 app2 rsyslogd-pstats: { "name": "main Q", '
        '"origin": "core.queue", "size": 3, "maxqsize": 4 }'
    )
    assert record["size"] == 3


def test_the_file_is_replaced_atomically(tmp_path):
    target = tmp_path / "sevenleague_rsyslog.prom"
    target.write_text("old\n")
    stats.write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["sevenleague_rsyslog.prom"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sevenleague_rsyslog.prom"
    target.write_text("old\n")

    def refuse(src, dst):
        raise OSError("no")

    monkeypatch.setattr(stats.os, "replace", refuse)
    with pytest.raises(OSError):
        stats.write_atomic(str(target), "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sevenleague_rsyslog.prom"]


def test_each_burst_is_written_once_it_is_over(tmp_path):
    """A burst of records, a pause, and the file holds the burst; then the next one."""
    target = tmp_path / "sevenleague_rsyslog.prom"
    read_fd, write_fd = os.pipe()
    clock = iter(range(100, 200)).__next__
    worker = threading.Thread(target=stats.run, args=(read_fd, str(target), clock, 0.05))
    worker.start()
    try:
        os.write(write_fd, BOOKWORM_CLIENT.encode())
        _wait_for(lambda: target.exists())
        assert samples(target.read_text())['sevenleague_rsyslog_queue_size{queue="main Q"}'] == 14
        os.write(write_fd, b'{ "name": "main Q", "origin": "core.queue", "size": 99, "maxqsize": 99 }\n')
        _wait_for(lambda: 'queue="main Q"} 99' in target.read_text())
    finally:
        os.close(write_fd)
        worker.join(5)
        os.close(read_fd)
    assert not worker.is_alive()
    got = samples(target.read_text())
    # The other records stay as the first burst left them.
    assert got['sevenleague_rsyslog_action_processed_total{action="forward-logs1.sevenleague.test"}'] == 65
    assert got["sevenleague_rsyslog_stats_timestamp_seconds"] >= 101


def _wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.01)


def test_the_program_reads_stdin_and_writes_the_file(tmp_path):
    target = tmp_path / "sevenleague_rsyslog.prom"
    result = subprocess.run(
        [*TOOL, str(target)], input=TRIXIE_AGGREGATOR, capture_output=True, text=True, timeout=30, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert 'sevenleague_rsyslog_input_submitted_total{input="imrelp(2514)"} 104' in target.read_text()


def test_the_program_wants_an_absolute_path():
    result = subprocess.run([*TOOL, "relative.prom"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 64


def test_the_program_survives_the_hangup_logrotate_sends_rsyslogs_unit(tmp_path):
    """Debian 12's rsyslog-rotate signals every process of rsyslog's unit, omprog's children too."""
    target = tmp_path / "sevenleague_rsyslog.prom"
    program = subprocess.Popen([*TOOL, str(target)], stdin=subprocess.PIPE, text=True, env=ENV)
    try:
        program.stdin.write(TRIXIE_AGGREGATOR)
        program.stdin.flush()
        _wait_for(target.exists)
        program.send_signal(signal.SIGHUP)
        program.stdin.write('{ "name": "main Q", "origin": "core.queue", "size": 77, "maxqsize": 77 }\n')
        program.stdin.flush()
        _wait_for(lambda: 'queue="main Q"} 77' in target.read_text())
    finally:
        program.stdin.close()
        assert program.wait(10) == 0
