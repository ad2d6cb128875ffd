"""The exporter-toolkit web configuration checker (sevenleague_host.check_web_config, the
sevenleague-check-web-config command): node_exporter's TLS configuration and Alertmanager's basic auth."""

import json

import bcrypt
import pytest

from sevenleague_host import check_web_config as check

HASH = bcrypt.hashpw(b"a password", bcrypt.gensalt(rounds=4)).decode()


@pytest.mark.parametrize(
    "users",
    [{"prometheus": HASH}, {"prometheus": HASH.replace("$2b$", "$2y$", 1)}, {}],
)
def test_bcrypt_users_pass(users):
    assert check.problems({"basic_auth_users": users}) == []


@pytest.mark.parametrize(
    ("users", "problem"),
    [
        ({"prometheus": "a password"}, "the password of 'prometheus' is not a bcrypt hash"),
        ({"prometheus": HASH[:-1]}, "the password of 'prometheus' is not a bcrypt hash"),
        ({"prometheus": None}, "the password of 'prometheus' is not a bcrypt hash"),
        ({"a:b": HASH}, "basic_auth_users: 'a:b' is not a user name"),
        (["prometheus"], "basic_auth_users is not a mapping"),
    ],
)
def test_anything_but_a_bcrypt_hash_is_refused(users, problem):
    assert problem in " ".join(check.problems({"basic_auth_users": users}))


def test_the_command_reads_the_json_file_and_names_its_problems(tmp_path, capsys):
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(json.dumps({"basic_auth_users": {"prometheus": HASH}}))
    bad.write_text(json.dumps({"basic_auth_users": {"prometheus": "plain"}, "basic_auth": {}}))
    assert check.main(["sevenleague-check-web-config", str(good)]) == 0
    assert check.main(["sevenleague-check-web-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'basic_auth'" in err and "not a bcrypt hash" in err
