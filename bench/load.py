#!/usr/bin/env python3
"""A fixed-rate HTTP load generator: the mesh's system tests and `make bench` run it on a lab host.

    load.py URL --rate 200 --duration 30
    load.py URL --rate 200 --until-file /run/stop-load      # until the file appears (at most --duration)

Sends GET URL `rate` times a second on an open loop: each request is due at its own time whether or
not the previous ones have answered (up to --workers in flight), and its latency counts from that
time, so a stall shows in the latency instead of slowing the sender down.  Any answer but 2xx, and
any error, is a failure.  Prints one JSON object: sent, ok, failed, errors by kind, seconds, the
achieved rate and latency percentiles in milliseconds.  Python's standard library only, so it runs
on any fleet host as it is.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import threading
import time
import urllib.parse


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Load:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"load: {url!r}: only http://host[:port]/path URLs")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def one(self, due: float) -> None:
        error = None
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path, headers={"User-Agent": "sevenleague-load"})
                response = conn.getresponse()
                response.read()
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        elapsed = (time.monotonic() - due) * 1000
        with self.lock:
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1
            else:
                self.latencies.append(elapsed)

    def worker(self, due_times: queue.Queue) -> None:
        while (due := due_times.get()) is not None:
            self.one(due)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=60, help="seconds (the most, with --until-file)")
    parser.add_argument("--until-file", help="stop once this file exists")
    parser.add_argument("--workers", type=int, default=64, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=5, help="seconds per request")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.workers < 1:
        parser.error("--rate and --duration must be positive, --workers at least 1")

    load = Load(args.url, args.timeout)
    due_times: queue.Queue = queue.Queue()
    workers = [threading.Thread(target=load.worker, args=(due_times,), daemon=True) for _ in range(args.workers)]
    for thread in workers:
        thread.start()
    interval = 1 / args.rate
    started = time.monotonic()
    sent = 0
    while True:
        now = time.monotonic()
        if now - started >= args.duration or (args.until_file and os.path.exists(args.until_file)):
            break
        # Every request due by now, then sleep until the next one is.
        while started + sent * interval <= now:
            due_times.put(started + sent * interval)
            sent += 1
        time.sleep(max(0.0, started + sent * interval - time.monotonic()))
    seconds = time.monotonic() - started
    for _ in workers:
        due_times.put(None)
    for thread in workers:
        thread.join(args.timeout + 5)

    latencies = sorted(load.latencies)
    failed = sum(load.errors.values())
    print(
        json.dumps(
            {
                "url": args.url,
                "target_rate": args.rate,
                "sent": sent,
                "ok": len(latencies),
                "failed": failed,
                "errors": load.errors,
                "seconds": round(seconds, 2),
                "rate": round(sent / seconds, 1) if seconds else 0,
                "latency_ms": {
                    name: round(percentile(latencies, q), 2)
                    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
