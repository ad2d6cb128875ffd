"""Check an OpenBao configuration before it replaces the running one.

`bao operator diagnose` parses the file, loads the TLS certificate and key, opens the storage and
the listeners. The running server holds the Raft database and the ports, so the check runs on a
copy whose storage is an empty temporary directory and whose listeners bind to port 0 (a unix
listener to a socket in that directory); everything else is the file as written. Exit 0 when
diagnose finds no failure (warnings are fine).

    sevenleague-openbao-check-config /etc/openbao/openbao.hcl.tmp
"""

import json
import os
import subprocess
import sys
import tempfile

BAO = os.environ.get("BAO_BINARY", "/usr/bin/bao")


def failures(node, path=()):
    """(check path, message) of every failed check in diagnose's JSON tree."""
    here = (*path, node.get("name", "?"))
    found = [(" / ".join(here[1:]) or here[0], node.get("message", ""))] if node.get("status") == "fail" else []
    for child in node.get("children") or []:
        found.extend(failures(child, here))
    # A failed parent only repeats what its children say.
    return [item for item in found if item[1]] or found


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 64
    with open(argv[1], encoding="utf-8") as handle:
        try:
            config = json.load(handle)
        except ValueError as exc:
            print(f"{argv[1]}: not valid JSON: {exc}", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="openbao-check-") as scratch:
        for storage in (config.get("storage") or {}).values():
            storage["path"] = os.path.join(scratch, "raft")
            os.mkdir(storage["path"], 0o700)
        for number, listener in enumerate(config.get("listener") or []):
            for kind, settings in listener.items():
                if kind == "unix":
                    settings["address"] = os.path.join(scratch, f"listener-{number}.sock")
                else:
                    settings["address"] = "127.0.0.1:0"
                    settings["cluster_address"] = "127.0.0.1:0"
        copy = os.path.join(scratch, "openbao.hcl")
        with open(copy, "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        run = subprocess.run(
            [BAO, "operator", "diagnose", "-format=json", f"-config={copy}"],
            capture_output=True,
            text=True,
            check=False,
        )
    # diagnose exits 0 on success, 2 with warnings only, 1 on a failure.
    if run.returncode in (0, 2):
        return 0
    try:
        problems = failures(json.loads(run.stdout))
    except ValueError:
        problems = [("diagnose", (run.stdout + run.stderr).strip())]
    # diagnose (2.7) fails any telemetry stanza without Stackdriver settings, which the server
    # itself does not need: that one finding is false unless the file asks for Stackdriver.
    if not any(key.startswith("stackdriver_") for key in config.get("telemetry") or {}):
        problems = [
            (where, message)
            for where, message in problems
            if not (where.endswith("Check Telemetry") and "Stackdriver" in message)
        ]
        if not problems:
            return 0
    for where, message in problems:
        print(f"{argv[1]}: {where}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
