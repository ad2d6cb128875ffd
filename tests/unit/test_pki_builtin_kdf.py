"""The built-in CA's keys at rest, at the real KDF cost: the format, openssl reading it, the in-place upgrade."""

import os
import shutil
import subprocess
import time

import pki_builtin_ca as mod
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.sevenleague.platform.plugins.module_utils import ca_keyfile, pki

DOMAIN = "sevenleague.test"
ROOT_PASSPHRASE = "correct horse battery staple"
INTERMEDIATE_PASSPHRASE = "intermediate secret, not the root's"
KEYS = {"root.key": ROOT_PASSPHRASE, "intermediate.key": INTERMEDIATE_PASSPHRASE}
PLAIN = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()


def ensure(ca_dir, **kwargs):
    options = {
        "root_passphrase": ROOT_PASSPHRASE,
        "intermediate_passphrase": INTERMEDIATE_PASSPHRASE,
        "allowed_domains": [DOMAIN],
    }
    return mod.ensure_ca(str(ca_dir), **{**options, **kwargs})


def openssl(*args, passphrase=None):
    env = {**os.environ, "PASSIN": passphrase} if passphrase is not None else None
    return subprocess.run(
        ["openssl", *args, *(["-passin", "env:PASSIN"] if env else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def key(path, passphrase):
    return serialization.load_pem_private_key(path.read_bytes(), password=passphrase.encode())


def contents(ca_dir):
    return {path.name: path.read_bytes() for path in ca_dir.iterdir()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A CA made once, at the real cost; tests work on copies."""
    ca_dir = tmp_path_factory.mktemp("kdf") / "ca"
    ensure(ca_dir)
    return ca_dir


@pytest.fixture
def ca_dir(made, tmp_path):
    shutil.copytree(made, tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def old_style(made, tmp_path):
    """A CA as earlier versions left it: the root key at 2048 PBKDF2 iterations, the intermediate key plain."""
    ca_dir = tmp_path / "old"
    shutil.copytree(made, ca_dir)
    root = key(made / "root.key", ROOT_PASSPHRASE)
    (ca_dir / "root.key").write_bytes(
        root.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(ROOT_PASSPHRASE.encode()),
        )
    )
    intermediate = key(made / "intermediate.key", INTERMEDIATE_PASSPHRASE)
    (ca_dir / "intermediate.key").write_bytes(
        intermediate.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert "INTEGER           :0800" in openssl("asn1parse", "-in", str(ca_dir / "root.key")).stdout
    return ca_dir


def test_the_kdf_cost_is_a_modern_one():
    assert ca_keyfile.KDF_ITERATIONS >= 600_000  # OWASP 2023 for PBKDF2-HMAC-SHA256
    assert ca_keyfile.KDF_SALT_BYTES >= 16


@pytest.mark.parametrize("name", sorted(KEYS))
def test_new_keys_are_pbes2_pbkdf2_sha256_aes256_at_the_full_cost(made, name):
    path = made / name
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(path.read_bytes(), password=None)
    parsed = openssl("asn1parse", "-in", str(path))
    assert parsed.returncode == 0, parsed.stderr
    fields = [line.split(":", 3)[-1].strip() for line in parsed.stdout.splitlines()]
    for name_of in ("PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"):
        assert name_of in fields, parsed.stdout
    integers = [int(line.rsplit(":", 1)[1], 16) for line in parsed.stdout.splitlines() if "prim: INTEGER" in line]
    assert integers == [ca_keyfile.KDF_ITERATIONS], parsed.stdout  # the only INTEGER: PBKDF2's iteration count
    assert ca_keyfile.kdf_is_current(path.read_bytes())


@pytest.mark.parametrize("name", sorted(KEYS))
def test_openssl_opens_the_keys_with_their_passphrase_only(made, name):
    cert = "root.crt" if name == "root.key" else "intermediate.crt"
    public = openssl("pkey", "-in", str(made / name), "-pubout", passphrase=KEYS[name])
    assert public.returncode == 0, public.stderr
    assert public.stdout == openssl("x509", "-in", str(made / cert), "-noout", "-pubkey").stdout
    assert openssl("pkey", "-in", str(made / name), "-noout", passphrase="wrong").returncode != 0


def test_loading_a_key_stays_well_under_a_second(made):
    started = time.perf_counter()
    key(made / "intermediate.key", INTERMEDIATE_PASSPHRASE)
    assert time.perf_counter() - started < 1.0


def test_an_old_style_ca_is_reencrypted_in_place_keeping_keys_and_certificates(old_style):
    before = contents(old_style)
    old_keys = {
        name: serialization.load_pem_private_key(
            before[name], password=ROOT_PASSPHRASE.encode() if name == "root.key" else None
        )
        for name in KEYS
    }
    with pytest.raises(pki.PKIError, match="is not encrypted: run state=ca with intermediate_passphrase"):
        mod.load_ca(str(old_style), INTERMEDIATE_PASSPHRASE)

    checked = ensure(old_style, check_mode=True)
    assert checked["changed"] and checked["rekeyed"] == ["root.key", "intermediate.key"]
    assert contents(old_style) == before, "check mode wrote"

    result = ensure(old_style)
    assert result["changed"] and not result["created"] and result["rekeyed"] == ["root.key", "intermediate.key"]
    after = contents(old_style)
    assert set(after) == set(before), "temporary files left"
    for name in ("root.crt", "intermediate.crt", "chain.pem"):
        assert after[name] == before[name]
    for name, passphrase in KEYS.items():
        assert ca_keyfile.kdf_is_current(after[name])
        assert key(old_style / name, passphrase).private_bytes(*PLAIN) == old_keys[name].private_bytes(*PLAIN)
        assert os.stat(old_style / name).st_mode & 0o777 == 0o600
    assert mod.load_ca(str(old_style), INTERMEDIATE_PASSPHRASE).intermediate_key is not None

    again = ensure(old_style)
    assert not again["changed"] and again["rekeyed"] == []
    assert contents(old_style) == after


def test_a_wrong_passphrase_on_an_old_style_ca_changes_nothing(old_style):
    before = contents(old_style)
    with pytest.raises(pki.PKIError) as error:
        ensure(old_style, root_passphrase="not the passphrase")
    assert str(error.value) == f"root CA key in {old_style}/root.key cannot be decrypted with the given passphrase"
    assert contents(old_style) == before


def test_a_wrong_intermediate_passphrase_fails_clearly(ca_dir):
    before = contents(ca_dir)
    with pytest.raises(pki.PKIError) as error:
        ensure(ca_dir, intermediate_passphrase=ROOT_PASSPHRASE)
    assert str(error.value) == (
        f"intermediate CA key in {ca_dir}/intermediate.key cannot be decrypted with the given passphrase"
    )
    with pytest.raises(pki.PKIError, match="intermediate.key cannot be decrypted with the given passphrase"):
        mod.load_ca(str(ca_dir), "wrong")
    assert contents(ca_dir) == before


def test_a_reencryption_that_does_not_verify_keeps_the_old_file(old_style, monkeypatch):
    before = contents(old_style)
    stranger = ec.generate_private_key(ec.SECP384R1())  # a good file, but of another key
    real_key_pem = ca_keyfile.key_pem
    monkeypatch.setattr(ca_keyfile, "key_pem", lambda _key, passphrase: real_key_pem(stranger, passphrase))
    with pytest.raises(pki.PKIError, match="re-encrypting .*root.key failed: .* the old file is unchanged"):
        ensure(old_style)
    assert contents(old_style) == before


def test_stronger_keys_made_by_hand_are_left_alone_weaker_ones_are_not(made, tmp_path):
    plain = openssl("pkey", "-in", str(made / "intermediate.key"), passphrase=INTERMEDIATE_PASSPHRASE).stdout
    for options, current in (
        (["-v2prf", "hmacWithSHA512", "-iter", str(ca_keyfile.KDF_ITERATIONS + 1)], True),
        ([], False),  # openssl's default: 2048 iterations
        (["-v2prf", "hmacWithSHA1", "-iter", str(ca_keyfile.KDF_ITERATIONS)], False),
    ):
        made_by_hand = subprocess.run(
            ["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", *options, "-passout", "pass:x"],
            input=plain,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert ca_keyfile.kdf_is_current(made_by_hand.encode()) is current, options
