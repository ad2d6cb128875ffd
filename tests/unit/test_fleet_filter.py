"""The rollovers' gate (plugins/filter/fleet.py): a host passes only when every file it read back shows the text."""

import base64

import fleet
import pytest

NEXT_ROOT = "-----BEGIN CERTIFICATE-----\nnext\n-----END CERTIFICATE-----"
OLD_ROOT = "-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----"


def read(path, *pems):
    return {"content": base64.b64encode("\n".join(pems).encode()).decode(), "source": path, "encoding": "base64"}


def loop(*reads):
    return {"changed": False, "msg": "All items completed", "results": list(reads)}


def missing(hostvars, filename="ca.pem", text=NEXT_ROOT + "\n"):
    return fleet.hosts_without(list(hostvars), hostvars, "__check", text, filename)


def test_hosts_whose_every_file_shows_it_pass():
    hostvars = {
        "app1": {"__check": loop(read("/etc/sevenleague/pki/current/ca.pem", OLD_ROOT, NEXT_ROOT))},
        "ca1": {
            "__check": loop(
                read("/etc/sevenleague/pki/current/ca.pem", NEXT_ROOT),
                read("/etc/openbao/tls/current/ca.pem", NEXT_ROOT),
            )
        },
        # One read without a loop counts the same.
        "app2": {"__check": read("/etc/sevenleague/pki/current/ca.pem", NEXT_ROOT)},
    }
    assert missing(hostvars) == []


@pytest.mark.parametrize(
    "result",
    [
        loop(read("/etc/sevenleague/pki/current/ca.pem", OLD_ROOT)),
        loop(read("/etc/sevenleague/pki/current/ca.pem", NEXT_ROOT), read("/etc/openbao/tls/current/ca.pem", OLD_ROOT)),
        {"unreachable": True, "msg": "Failed to connect to the host via ssh", "changed": False},
        loop({"failed": True, "msg": "file not found", "item": "/etc/sevenleague/pki"}),
        {"skipped": True, "changed": False},
        loop(),
        None,
        # Left by the check before: another file, however much it shows.
        loop(read("/etc/sevenleague/pki/current/chain.pem", NEXT_ROOT)),
        {"content": "not base64!", "source": "/etc/sevenleague/pki/current/ca.pem"},
    ],
    ids=["old only", "one of two", "unreachable", "failed", "skipped", "no file", "never ran", "stale", "garbled"],
)
def test_a_host_not_showing_it_everywhere_is_named(result):
    hostvars = {"app1": {"__check": read("/etc/sevenleague/pki/current/ca.pem", NEXT_ROOT)}, "app2": {}}
    if result is not None:
        hostvars["app2"]["__check"] = result
    assert missing(hostvars) == ["app2"]


def test_an_inventory_host_with_no_variables_at_all_is_named():
    hostvars = {"app1": {"__check": read("/x/current/ca.pem", NEXT_ROOT)}}
    assert fleet.hosts_without(["app1", "app9"], hostvars, "__check", NEXT_ROOT, "ca.pem") == ["app9"]


def test_nothing_to_look_for_passes_no_host():
    hostvars = {"app1": {"__check": read("/x/current/ca.pem", NEXT_ROOT)}}
    assert missing(hostvars, text="  \n") == ["app1"]


def test_without_a_file_name_any_file_counts():
    hostvars = {"app1": {"__check": read("/x/current/chain.pem", NEXT_ROOT)}}
    assert missing(hostvars, filename=None) == []
