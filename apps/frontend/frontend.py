#!/usr/bin/env python3
"""frontend: GET / asks greeter for a greeting, through the upstream URL
(the local Envoy in production), and answers with its own info and greeter's.

Runs from the directory that also holds svc.py (the shared server machinery).
"""

import http.client
import json
import math
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

import svc

__version__ = "1.1.0"

DEFAULTS: dict[str, Any] = {
    "port": 8080,
    "upstream_url": "http://127.0.0.1:8081",
    "upstream_timeout_seconds": 2.0,
}
CHECKS: dict[str, svc.Check] = {
    "upstream_url": (
        lambda v: urlsplit(v).scheme in ("http", "https") and bool(urlsplit(v).netloc),
        "must be an http:// or https:// URL",
    ),
    "upstream_timeout_seconds": (lambda v: math.isfinite(v) and v > 0, "must be a number > 0"),
}
# Greeter's answer is a few hundred bytes; never buffer an unbounded body.
MAX_UPSTREAM_BODY = 64 * 1024


def make_routes(config: dict[str, Any]) -> dict[str, svc.Route]:
    host = socket.gethostname()
    hello_url = config["upstream_url"].rstrip("/") + "/hello"
    timeout = config["upstream_timeout_seconds"]
    # The upstream is a local address: an http_proxy from the environment
    # must not reroute it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def index(query: svc.Query) -> tuple[int, dict[str, Any]]:
        url = hello_url + ("?" + urlencode({"name": query["name"][0]}) if "name" in query else "")
        request = urllib.request.Request(url, headers={"User-Agent": f"frontend/{__version__}"})
        start = time.perf_counter()
        try:
            with opener.open(request, timeout=timeout) as response:
                greeting = json.loads(response.read(MAX_UPSTREAM_BODY))
            if not isinstance(greeting, dict):
                raise ValueError("answer is not a JSON object")
        except urllib.error.HTTPError as e:
            if e.code == 400:  # greeter refused the caller's input: the caller's fault, not ours
                return 400, _upstream_error(e)
            svc.log("warning", "upstream failed", url=hello_url, error=f"HTTP {e.code}")
            return 502, {"error": "upstream failed", "upstream_status": e.code}
        except (OSError, http.client.HTTPException, ValueError) as e:
            # OSError covers refused connections and timeouts (URLError is one).
            svc.log("warning", "upstream failed", url=hello_url, error=str(e))
            return 502, {"error": "upstream failed"}
        return 200, {
            "name": "frontend",
            "host": host,
            "version": __version__,
            "upstream_ms": round((time.perf_counter() - start) * 1000, 3),
            "greeter": greeting,
        }

    return {"/": index}


def _upstream_error(e: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        return {"error": json.loads(e.read(MAX_UPSTREAM_BODY))["error"]}
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return {"error": "bad request"}


if __name__ == "__main__":
    sys.exit(svc.main("frontend", __version__, DEFAULTS, CHECKS, make_routes))
