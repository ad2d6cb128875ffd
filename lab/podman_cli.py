"""The lab's paths, releases and label, and how it calls podman."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"
STATE = ROOT / ".lab"
# The Debian releases a lab host can run, by codename; new hosts get the first.
RELEASES = ("trixie", "bookworm")
DEFAULT_RELEASE = RELEASES[0]
LABEL = "io.sevenleague.lab=1"


def log(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def podman(*args: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONTAINERS_CONF=str(LAB / "containers.conf"))
    return subprocess.run(
        ["podman", *args],
        check=check,
        text=True,
        env=env,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        **kw,
    )


def exists(kind: str, name: str) -> bool:
    return podman(kind, "exists", name, check=False).returncode == 0
