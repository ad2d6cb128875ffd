"""The host_secret module: a secret made once on the host, its file's access, and a bcrypt hash that stays put."""

import json
import stat

import bcrypt
import host_secret as mod
from ansible_module import assert_documented, run_module


def test_documented():
    assert_documented(mod)


def test_a_hash_is_kept_while_it_matches_and_replaced_when_not():
    fast = bcrypt.hashpw(b"one", bcrypt.gensalt(rounds=4)).decode()
    assert mod.hash_for("one", fast, bcrypt) == fast
    other = mod.hash_for("two", fast, bcrypt)
    assert other != fast and bcrypt.checkpw(b"two", other.encode())
    assert bcrypt.checkpw(b"one", mod.hash_for("one", "not a hash", bcrypt).encode())


def test_the_current_hash_is_read_from_the_web_config():
    assert mod.current_hash(json.dumps({"basic_auth_users": {"prometheus": "$2b$x"}}), "prometheus") == "$2b$x"
    assert mod.current_hash(json.dumps({"basic_auth_users": {"other": "$2b$x"}}), "prometheus") == ""
    assert mod.current_hash("", "prometheus") == mod.current_hash("[1]", "prometheus") == ""


def test_the_secret_is_made_once_never_shown_and_hashed_stably(tmp_path):
    path, web = tmp_path / "secret", tmp_path / "web.json"
    args = {"path": str(path), "mode": "0640", "web_user": "prometheus", "web_config": str(web)}
    first, output = run_module("host_secret", args, tmp_path)
    assert first["changed"] and first["created"], first
    secret = path.read_text()
    assert len(secret) == 43 and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert secret not in output
    assert bcrypt.checkpw(secret.encode(), first["bcrypt_hash"].encode())
    web.write_text(json.dumps({"basic_auth_users": {"prometheus": first["bcrypt_hash"]}}))
    second, _ = run_module("host_secret", args, tmp_path)
    assert not second["changed"] and second["bcrypt_hash"] == first["bcrypt_hash"]
    assert path.read_text() == secret


def test_check_mode_makes_nothing(tmp_path):
    path = tmp_path / "secret"
    secret, created = mod.ensure_secret(str(path), True, None)
    assert created and len(secret) == 43 and not path.exists()
    path.write_text("kept\n")
    assert mod.ensure_secret(str(path), True, None) == ("kept", False)
    assert mod.ensure_secret(str(path), False, None) == ("kept", False)
