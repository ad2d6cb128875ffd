"""pki_renewal_check, the renewal decision the pki role asks for both backends, through Ansible."""

import pytest
from ansible_module import assert_documented, run_module
from test_pki import DOMAIN, HOST, HOST_IP, make_csr, new_ca, sign

import pki_builtin_ca
import pki_renewal_check as mod


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    """Two CAs of the same name: the second one stands for a rolled-over CA."""
    folder = tmp_path_factory.mktemp("cas")
    new_ca(folder / "one"), new_ca(folder / "two")
    return pki_builtin_ca.load_ca(str(folder / "one")), pki_builtin_ca.load_ca(str(folder / "two"))


@pytest.fixture(scope="module")
def current(cas):
    sans = [HOST, HOST_IP]
    return sign(cas[0], make_csr(sans), sans)["certificate"]


def test_documentation_matches_the_argument_spec():
    assert_documented(mod)


def decide(tmp_path, **args):
    result, _ = run_module("pki_renewal_check", {"sans": [HOST, HOST_IP], **args}, tmp_path)
    assert not result.get("failed"), result.get("msg")
    assert not result["changed"]
    return result


def test_a_valid_certificate_from_todays_issuer_stays(cas, current, tmp_path):
    result = decide(tmp_path, current_certificate=current, issuer_certificate=cas[0].pem(cas[0].intermediate_cert),
                    name="openbao")
    assert result["renew"] is False and result["reason"].startswith("valid: renews after")
    assert result["info"]["sans"] == [HOST_IP, HOST]
    assert f'name="openbao",serial="{result["info"]["serial"]}"' in result["metrics"]


def test_another_issuer_renews(cas, current, tmp_path):
    result = decide(tmp_path, current_certificate=current, issuer_certificate=cas[1].pem(cas[1].intermediate_cert))
    assert result["renew"] is True and result["reason"].startswith("issuer changed")


def test_changed_names_renew(cas, current, tmp_path):
    result = decide(tmp_path, current_certificate=current, sans=[HOST, f"api.{DOMAIN}", HOST_IP])
    assert result["renew"] is True and result["reason"] == f"SANs differ: missing api.{DOMAIN}"


def test_no_certificate_renews_and_reports_nothing(tmp_path):
    result = decide(tmp_path)
    assert result["renew"] is True and result["reason"] == "no certificate"
    assert result["info"] == {} and result["metrics"] == ""


def test_a_malformed_wanted_name_is_an_error(tmp_path):
    result, _ = run_module("pki_renewal_check", {"sans": ["not a name"]}, tmp_path)
    assert result.get("failed") and "not a name" in result["msg"]
