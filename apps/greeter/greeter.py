#!/usr/bin/env python3
"""greeter: answers GET /hello?name=X with a greeting, its host and version.

Runs from the directory that also holds svc.py (the shared server machinery).
"""

import socket
import sys
from typing import Any

import svc

__version__ = "1.1.0"

NAME_MAX_LENGTH = 64


def make_routes(_config: dict[str, Any]) -> dict[str, svc.Route]:
    host = socket.gethostname()

    def hello(query: svc.Query) -> tuple[int, dict[str, Any]]:
        name = query.get("name", ["world"])[0]
        # The name is echoed back and ends up in logs and other services'
        # answers: keep it short and free of control characters.
        if not 1 <= len(name) <= NAME_MAX_LENGTH or not name.isprintable():
            return 400, {"error": f"name must be 1 to {NAME_MAX_LENGTH} printable characters"}
        return 200, {"greeting": f"Hello, {name}!", "host": host, "version": __version__}

    return {"/hello": hello}


if __name__ == "__main__":
    sys.exit(svc.main("greeter", __version__, {"port": 8081}, {}, make_routes))
