"""Turn rsyslog's impstats JSON lines into a node_exporter textfile.

rsyslog's omprog starts this program and writes one impstats record per line to its stdin
(module impstats, format="json", resetCounters="off", so the counters only grow until rsyslog
restarts, and then this program restarts with it). Every record updates the latest values; once
a burst of records is over (no line for QUIET seconds) the whole textfile is written again,
atomically: a temporary file in the same directory, whose name starts with a dot, renamed over
the old one.

Only inputs, actions and queues become series, labelled by their configured names, so the
number of series is fixed by the configuration.

    sevenleague-rsyslog-stats /var/lib/prometheus/node-exporter/sevenleague_rsyslog.prom
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import tempfile
import time

# Seconds without a new record after which a burst of impstats records is taken as complete.
QUIET = 0.5

# (metric, impstats fields summed, type, help) per kind of record.
INPUT_METRICS = [
    (
        "sevenleague_rsyslog_input_submitted_total",
        ("submitted",),
        "counter",
        "Messages the input has submitted to rsyslog.",
    ),
]
ACTION_METRICS = [
    ("sevenleague_rsyslog_action_processed_total", ("processed",), "counter", "Messages the action has processed."),
    ("sevenleague_rsyslog_action_failed_total", ("failed",), "counter", "Messages the action failed to process."),
    ("sevenleague_rsyslog_action_suspended_total", ("suspended",), "counter", "Times the action was suspended."),
    (
        "sevenleague_rsyslog_action_suspended_seconds_total",
        ("suspended.duration",),
        "counter",
        "Seconds the action spent suspended.",
    ),
    (
        "sevenleague_rsyslog_action_resumed_total",
        ("resumed",),
        "counter",
        "Times the action resumed after a suspension.",
    ),
]
QUEUE_METRICS = [
    ("sevenleague_rsyslog_queue_size", ("size",), "gauge", "Messages in the queue now."),
    (
        "sevenleague_rsyslog_queue_max_size",
        ("maxqsize",),
        "gauge",
        "Most messages the queue has held at once (high-water mark).",
    ),
    ("sevenleague_rsyslog_queue_full_total", ("full",), "counter", "Times the queue was full."),
    (
        "sevenleague_rsyslog_queue_discarded_total",
        ("discarded.full", "discarded.nf"),
        "counter",
        "Messages the queue discarded, because it was full or nearly full.",
    ),
]
TIMESTAMP = "sevenleague_rsyslog_stats_timestamp_seconds"


def parse(line: str | bytes) -> dict | None:
    """The impstats record on a line, or None for anything else.

    Accepts the bare JSON object (the omprog template's %msg%) and a whole syslog line that
    ends with one, as impstats writes to a file.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    start = line.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return None
    return record


def classify(record: dict) -> tuple[str, str] | None:
    """(kind, label value) of a record that becomes series: input, action or queue."""
    origin, name = record.get("origin"), record["name"]
    if origin == "core.action":
        return "action", name
    if origin == "core.queue":
        # An action's queue is reported as "<action> queue" and its disk part as
        # "<action> queue[DA]": label them "<action>" and "<action>[DA]", like the action.
        if name.endswith(" queue"):
            name = name[: -len(" queue")]
        elif name.endswith(" queue[DA]"):
            name = name[: -len(" queue[DA]")] + "[DA]"
        return "queue", name
    if isinstance(origin, str) and not origin.startswith("core.") and _is_number(record.get("submitted")):
        return "input", name
    return None


def _is_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Stats:
    """The latest values of every input, action and queue seen."""

    def __init__(self):
        self.values: dict[tuple[str, str], dict[str, int]] = {}

    def update(self, record: dict | None) -> bool:
        """Take a record's values; True when it was one that becomes series."""
        if record is None:
            return False
        kind = classify(record)
        if kind is None:
            return False
        fields = {key: value for key, value in record.items() if _is_number(value)}
        self.values[kind] = fields
        return True

    def render(self, now: float) -> str:
        out = []
        for kind, label, metrics in (
            ("input", "input", INPUT_METRICS),
            ("action", "action", ACTION_METRICS),
            ("queue", "queue", QUEUE_METRICS),
        ):
            names = sorted(name for k, name in self.values if k == kind)
            for metric, fields, kind_type, text in metrics:
                out.append(f"# HELP {metric} {text}")
                out.append(f"# TYPE {metric} {kind_type}")
                for name in names:
                    values = self.values[(kind, name)]
                    if not any(field in values for field in fields):
                        continue
                    total = sum(values.get(field, 0) for field in fields)
                    out.append(f'{metric}{{{label}="{escape(name)}"}} {total}')
        out.append(f"# HELP {TIMESTAMP} When the statistics were last written (Unix time).")
        out.append(f"# TYPE {TIMESTAMP} gauge")
        out.append(f"{TIMESTAMP} {now:.3f}")
        return "\n".join(out) + "\n"


def escape(value: str) -> str:
    """A label value as the Prometheus text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_atomic(path: str, text: str) -> None:
    """Replace path with text; readers see the old file or the new one, never a part."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run(fd: int, path: str, clock=time.time, quiet: float = QUIET) -> int:
    """Read records from fd until it closes; write path after every burst."""
    stats = Stats()
    pending = b""
    dirty = False
    while True:
        ready, _, _ = select.select([fd], [], [], quiet if dirty else None)
        if not ready:
            write_atomic(path, stats.render(clock()))
            dirty = False
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            if pending:
                dirty |= stats.update(parse(pending))
            if dirty:
                write_atomic(path, stats.render(clock()))
            return 0
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            dirty |= stats.update(parse(line))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not os.path.isabs(argv[1]):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 64
    # Debian 12's logrotate sends SIGHUP to every process of rsyslog's unit: it is not for us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run(sys.stdin.fileno(), argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
