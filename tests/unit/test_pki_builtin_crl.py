"""The built-in CA's revocation: issued certificates kept, a host's revoked by name, a CRL signed by the
intermediate that lists them, made again only when something changed or half its life is over."""

import datetime

import pki_builtin_ca as mod
import pytest
from cryptography import x509
from test_pki import DAY, HOST, INTERMEDIATE_PASSPHRASE, make_csr, new_ca

from ansible_collections.sevenleague.platform.plugins.module_utils import ca_crl, ca_keyfile

UTC = datetime.UTC
OTHER = "app2.sevenleague.test"


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(ca_keyfile, "KDF_ITERATIONS", 1000)


def params(ca_dir, **kwargs):
    spec = {name: value.get("default") for name, value in mod.ARGUMENT_SPEC.items()}
    return {**spec, "state": "crl", "ca_dir": str(ca_dir), "intermediate_passphrase": INTERMEDIATE_PASSPHRASE, **kwargs}


def issue(ca_dir, name):
    """Sign as the module's state=signed does: the certificate is kept under issued/."""
    result = mod.run(
        params(
            ca_dir, state="signed", csr=make_csr([name]), sans=[name], ttl=DAY, allowed_domains=["sevenleague.test"]
        ),
        False,
    )
    return x509.load_pem_x509_certificate(result["certificate"].encode())


def serials_in(pem: str) -> set[int]:
    return {entry.serial_number for entry in x509.load_pem_x509_crl(pem.encode())}


def test_retiring_a_name_revokes_its_valid_certificates_only(tmp_path):
    new_ca(tmp_path / "ca")
    first, second, other = issue(tmp_path / "ca", HOST), issue(tmp_path / "ca", HOST), issue(tmp_path / "ca", OTHER)
    assert set(mod.run(params(tmp_path / "ca"), False)["known_names"]) == {HOST, OTHER}

    result = mod.run(params(tmp_path / "ca", revoke_names=[HOST]), False)

    assert result["changed"]
    assert sorted(result["revoked"]) == sorted(ca_crl.serial_hex(c.serial_number) for c in (first, second))
    assert serials_in(result["crl"]) == {first.serial_number, second.serial_number}
    assert other.serial_number not in serials_in(result["crl"])


def test_the_crl_is_the_intermediates_and_lives_as_long_as_asked(tmp_path):
    new_ca(tmp_path / "ca")
    ca = mod.load_ca(str(tmp_path / "ca"), INTERMEDIATE_PASSPHRASE)
    crl = x509.load_pem_x509_crl(mod.run(params(tmp_path / "ca", crl_lifetime=3 * DAY), False)["crl"].encode())
    assert crl.issuer == ca.intermediate_cert.subject
    assert crl.is_signature_valid(ca.intermediate_cert.public_key())
    life = crl.next_update_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=2.9) < life <= datetime.timedelta(days=3)


def test_a_second_run_changes_nothing_and_a_serial_is_revoked_once(tmp_path):
    new_ca(tmp_path / "ca")
    cert = issue(tmp_path / "ca", HOST)
    serial = format(cert.serial_number, "x")
    first = mod.run(params(tmp_path / "ca", revoke=[serial]), False)
    again = mod.run(params(tmp_path / "ca", revoke=[serial]), False)
    assert first["changed"] and not again["changed"] and again["revoked"] == []
    assert again["crl"] == first["crl"]


def test_check_mode_writes_nothing(tmp_path):
    new_ca(tmp_path / "ca")
    issue(tmp_path / "ca", HOST)
    result = mod.run(params(tmp_path / "ca", revoke_names=[HOST]), True)
    assert result["changed"] and len(result["revoked"]) == 1
    assert not (tmp_path / "ca" / "crl.pem").exists() and not (tmp_path / "ca" / "revoked.json").exists()


def test_a_crl_past_half_its_life_is_made_again(tmp_path):
    new_ca(tmp_path / "ca")
    ca = mod.load_ca(str(tmp_path / "ca"), INTERMEDIATE_PASSPHRASE)
    now = datetime.datetime.now(UTC)
    ca_crl.ensure_crl(str(tmp_path / "ca"), ca, lifetime=4 * DAY, check_mode=False, now=now)
    later = ca_crl.ensure_crl(
        str(tmp_path / "ca"), ca, lifetime=4 * DAY, check_mode=False, now=now + 1.9 * datetime.timedelta(days=1)
    )
    assert not later["changed"]
    late = ca_crl.ensure_crl(
        str(tmp_path / "ca"), ca, lifetime=4 * DAY, check_mode=False, now=now + datetime.timedelta(days=2.1)
    )
    assert late["changed"] and late["reason"] == "more than half of its life is over"


def test_an_expired_revocation_leaves_the_crl(tmp_path):
    new_ca(tmp_path / "ca")
    ca = mod.load_ca(str(tmp_path / "ca"), INTERMEDIATE_PASSPHRASE)
    cert = issue(tmp_path / "ca", HOST)
    now = datetime.datetime.now(UTC)
    ca_crl.ensure_crl(str(tmp_path / "ca"), ca, revoke_names=[HOST], lifetime=7 * DAY, check_mode=False, now=now)
    after = ca_crl.ensure_crl(
        str(tmp_path / "ca"), ca, lifetime=7 * DAY, check_mode=False, now=now + 1.1 * datetime.timedelta(days=1)
    )
    assert after["changed"] and cert.serial_number not in serials_in(after["crl"])
    assert not list((tmp_path / "ca" / "issued").iterdir())


def test_a_short_crl_lifetime_is_refused(tmp_path):
    new_ca(tmp_path / "ca")
    with pytest.raises(mod.PKIError, match="below an hour"):
        mod.run(params(tmp_path / "ca", crl_lifetime=600), False)


def test_another_ca_folder_gets_its_crl_too(tmp_path):
    new_ca(tmp_path / "ca")
    new_ca(tmp_path / "next")
    result = mod.run(params(tmp_path / "ca", other_ca_dirs=[str(tmp_path / "next"), str(tmp_path / "nothing")]), False)
    # The active CA's first, then the other's; a folder without a CA is skipped.
    assert result["crl"].count("BEGIN X509 CRL") == 2
    assert result["crl"].startswith((tmp_path / "ca" / "crl.pem").read_text())
