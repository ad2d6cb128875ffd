"""openbao_write against a real OpenBao dev server: a second run of the same write changes nothing."""

import openbao_write as mod
import pytest
from test_pki_openbao import dev_server


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("openbao-write")) as server:
        yield server


@pytest.fixture
def client(bao):
    return mod.Client(bao["url"], bao["token"], None, 5)


def write(client, path, data=None, state="present", read_path=None, check_mode=False):
    params = {"path": path, "data": data or {}, "state": state, "read_path": read_path}
    return mod.run(client, params, check_mode)


@pytest.mark.parametrize(
    "want, have",
    [
        ("24h", 86400),
        ("1h30m", 5400),
        (600, 600),
        ("90s", 90),
        ("300", 300),
        (["a", "b"], "a,b"),
        ("a, b", ["a", "b"]),
        ({"x": "1h", "y": True}, {"x": 3600, "y": True, "z": 1}),
        ("pem\n", "pem"),
    ],
)
def test_equal_in_openbaos_terms(want, have):
    assert mod.same(want, have)


@pytest.mark.parametrize(
    "want, have",
    [
        ("24h", 3600),
        (True, 1),
        (["a"], ["a", "b"]),
        ({"x": 1}, {}),
        ("a", "b"),
        ("soon", 10),
    ],
)
def test_different_in_openbaos_terms(want, have):
    assert not mod.same(want, have)


def test_enabling_a_mount_happens_once(client):
    first = write(client, "sys/mounts/pki_once", {"type": "pki"}, state="once")
    second = write(client, "sys/mounts/pki_once", {"type": "pki"}, state="once")
    assert first["changed"] and not first["existed"]
    assert not second["changed"] and second["existed"]


def test_a_tune_is_written_only_when_it_differs(client):
    write(client, "sys/mounts/pki_tune", {"type": "pki"}, state="once")
    first = write(client, "sys/mounts/pki_tune/tune", {"max_lease_ttl": "48h"})
    second = write(client, "sys/mounts/pki_tune/tune", {"max_lease_ttl": "172800"})
    assert first["changed"] and first["differences"] == ["max_lease_ttl"]
    assert not second["changed"]


def test_a_role_changes_only_when_its_values_do(client, bao):
    write(client, "sys/mounts/pki_role", {"type": "pki"}, state="once")
    role = {"allowed_domains": ["example.internal"], "allow_subdomains": True, "max_ttl": "24h", "key_type": "ec"}
    assert write(client, "pki_role/roles/host", role)["changed"]
    assert not write(client, "pki_role/roles/host", role)["changed"]
    changed = write(client, "pki_role/roles/host", {**role, "max_ttl": "1h"})
    assert changed["changed"] and changed["differences"] == ["max_ttl"]
    assert bao["client"].read("pki_role/roles/host")["data"]["max_ttl"] == 3600


def test_read_and_check_mode_write_nothing(client, bao):
    assert not write(client, "sys/mounts/pki_never", state="read")["existed"]
    planned = write(client, "sys/mounts/pki_never", {"type": "pki"}, state="once", check_mode=True)
    assert planned["changed"] and planned["response"] == {}
    assert "pki_never/" not in bao["client"].sys.list_mounted_secrets_engines()["data"]


def test_an_operation_returns_its_answer(client):
    write(client, "sys/mounts/pki_gen", {"type": "pki"}, state="once")
    root = write(
        client,
        "pki_gen/root/generate/internal",
        {"common_name": "test root", "key_type": "ec"},
        read_path="pki_gen/issuer/default",
        state="once",
    )
    assert root["changed"] and "BEGIN CERTIFICATE" in root["response"]["certificate"]
    again = write(
        client,
        "pki_gen/root/generate/internal",
        {"common_name": "test root", "key_type": "ec"},
        read_path="pki_gen/issuer/default",
        state="once",
    )
    assert not again["changed"]


def test_a_refused_write_names_openbaos_reason(client):
    with pytest.raises(mod.OpenBaoError, match="refused writing sys/mounts/bad.*"):
        write(client, "sys/mounts/bad", {"type": "no-such-engine"}, state="once")


def test_a_wrong_token_is_named(bao):
    client = mod.Client(bao["url"], "not-a-token", None, 5)
    with pytest.raises(mod.OpenBaoError, match="denied"):
        write(client, "sys/mounts/pki_x", {"type": "pki"})


def test_unreachable_openbao_is_named():
    client = mod.Client("http://127.0.0.1:9", "token", None, 2)
    with pytest.raises(mod.OpenBaoError, match="unreachable.*firewall"):
        write(client, "sys/mounts/pki_x", {"type": "pki"})


def test_an_operation_that_cannot_be_read_is_written_when_asked(client):
    write(client, "sys/mounts/pki_op", {"type": "pki"}, state="once")
    csr = write(
        client, "pki_op/intermediate/generate/internal", {"common_name": "int", "key_type": "ec"}, state="write"
    )
    assert csr["changed"] and "CERTIFICATE REQUEST" in csr["response"]["csr"]


def test_a_role_is_deleted_once_and_a_list_reads_what_is_left(client):
    write(client, "sys/mounts/pki-retire", {"type": "pki"}, state="once")
    for name in ("renew-a", "renew-b"):
        write(client, f"pki-retire/roles/{name}", {"allowed_domains": ["a.test"]})
    assert write(client, "pki-retire/roles?list=true", state="read")["current"]["keys"] == ["renew-a", "renew-b"]
    assert write(client, "pki-retire/roles/renew-b", state="absent", check_mode=True)["changed"]
    assert write(client, "pki-retire/roles/renew-b", state="absent")["changed"]
    assert not write(client, "pki-retire/roles/renew-b", state="absent")["changed"]
    assert write(client, "pki-retire/roles?list=true", state="read")["current"]["keys"] == ["renew-a"]
