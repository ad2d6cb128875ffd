"""openbao_intermediate against a real OpenBao dev server: a rollover's phases found from the mount's
issuers, the new intermediate added once, the old one retired only when it may be."""

import datetime
import json

import openbao_intermediate as mod
import pytest
from ansible_module import assert_documented, run_module
from cryptography import x509
from openbao_dev import dev_server

from ansible_collections.sevenleague.platform.plugins.module_utils.openbao import OpenBao

NOW = datetime.datetime(2026, 12, 7, 14, 30, 5, tzinfo=datetime.UTC)


def serial(pem: str) -> str:
    """A certificate's serial as OpenBao names it (colon-separated hex)."""
    number = f"{x509.load_pem_x509_certificate(pem.encode()).serial_number:x}"
    number = number.zfill(len(number) + len(number) % 2)
    return ":".join(number[i : i + 2] for i in range(0, len(number), 2))


def setup_pki(client, root: str, intermediate: str) -> None:
    """A root and a first intermediate, as the openbao role makes them."""
    client.sys.enable_secrets_engine("pki", path=root, config={"max_lease_ttl": "87600h"})
    client.sys.enable_secrets_engine("pki", path=intermediate, config={"max_lease_ttl": "43800h"})
    client.write(f"{root}/root/generate/internal", common_name="test root", key_type="ec", key_bits=384)
    csr = client.write(f"{intermediate}/intermediate/generate/internal", common_name="test int", key_type="ec")
    signed = client.write(
        f"{root}/root/sign-intermediate", csr=csr["data"]["csr"], common_name="test int", format="pem_bundle"
    )
    client.write(
        f"{intermediate}/intermediate/set-signed",
        certificate=f"{signed['data']['certificate']}\n{signed['data']['issuing_ca']}",
    )


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("openbao-intermediate")) as server:
        yield server


counter = iter(range(100))


@pytest.fixture
def mounts(bao):
    """A fresh root and intermediate mount for each test."""
    n = next(counter)
    root, intermediate = f"root{n}", f"int{n}"
    setup_pki(bao["client"], root, intermediate)
    return root, intermediate


@pytest.fixture
def api(bao):
    return OpenBao(bao["url"], token=bao["token"], timeout=5)


def params(mounts, step="add", **overrides):
    root, intermediate = mounts
    return {
        "step": step,
        "root_mount": root,
        "int_mount": intermediate,
        "common_name": "test int",
        "ttl": "8760h",
        "permitted_dns_domains": ["example.internal"],
        "record": None,
        "again": False,
        "until": "retire",
        "limit": "",
        "issuer_id": "",
        **overrides,
    }


def test_a_first_run_adds_a_new_intermediate_beside_the_old_one(api, mounts):
    before = mod.signing_issuers(api, mounts[1])
    result = mod.run(api, params(mounts), check_mode=False, now=NOW)
    assert result["changed"] and not result["done"] and result["steps"] == ["renew", "retire"]
    assert result["old"] == before[0] and result["old"]["key_name"] == ""
    assert result["new"]["key_name"] == "intermediate-20261207T143005Z"
    assert "BEGIN CERTIFICATE" in result["new"]["certificate"]
    assert [issuer["issuer_id"] for issuer in result["issuers"]] == [
        result["old"]["issuer_id"],
        result["new"]["issuer_id"],
    ]
    # Signed by the same root, under the name constraints asked for.
    old, new = (x509.load_pem_x509_certificate(result[k]["certificate"].encode()) for k in ("old", "new"))
    assert new.issuer == old.issuer and new.public_key() != old.public_key()
    constraints = new.extensions.get_extension_for_class(x509.NameConstraints).value
    assert [name.value for name in constraints.permitted_subtrees] == ["example.internal"]


def test_a_rerun_resumes_with_the_same_two_and_adds_nothing(api, mounts):
    first = mod.run(api, params(mounts), check_mode=False, now=NOW)
    again = mod.run(api, params(mounts), check_mode=False)
    assert not again["changed"] and again["old"] == first["old"] and again["new"] == first["new"]


def test_stopping_after_trust_leaves_no_later_step(api, mounts):
    assert mod.run(api, params(mounts, until="trust"), check_mode=False, now=NOW)["steps"] == []


def test_check_mode_says_it_would_add_and_adds_nothing(api, mounts):
    result = mod.run(api, params(mounts), check_mode=True, now=NOW)
    assert result["changed"] and result["new"]["issuer_id"] == ""
    assert len(mod.signing_issuers(api, mounts[1])) == 1


@pytest.mark.parametrize("overrides", [{"limit": "app1"}, {"until": "renew"}])
def test_a_partial_or_unknown_rollover_is_refused(api, mounts, overrides):
    with pytest.raises(mod.Refusal, match="cannot run with --limit; rotate_openbao_until is trust or retire"):
        mod.run(api, params(mounts, **overrides), check_mode=False)
    assert len(mod.signing_issuers(api, mounts[1])) == 1


def test_a_mount_with_more_issuers_than_a_rollover_makes_is_refused(api, mounts):
    mod.run(api, params(mounts), check_mode=False, now=NOW)
    mod.add_intermediate(api, params(mounts), NOW + datetime.timedelta(seconds=1))
    with pytest.raises(mod.Refusal, match=f"{mounts[1]} holds 3 issuers .*bao delete {mounts[1]}/issuer/<id>"):
        mod.run(api, params(mounts), check_mode=False)


def test_retiring_revokes_at_the_root_and_deletes_the_issuer_and_its_key(api, mounts):
    root, intermediate = mounts
    added = mod.run(api, params(mounts), check_mode=False, now=NOW)
    old, new = added["old"], added["new"]
    retire = params(mounts, "retire", issuer_id=old["issuer_id"])
    # The old one is still the default: hosts would have nothing to renew from.
    with pytest.raises(mod.Refusal, match="it is the default or the only signing issuer"):
        mod.run(api, retire, check_mode=False)
    api.write(f"{intermediate}/config/issuers", {"default": new["issuer_id"]})
    assert mod.run(api, retire, check_mode=True)["changed"]
    assert len(mod.signing_issuers(api, intermediate)) == 2
    result = mod.run(api, retire, check_mode=False)
    assert result["changed"] and [issuer["issuer_id"] for issuer in result["issuers"]] == [new["issuer_id"]]
    assert not api.read(f"{intermediate}/key/{old['key_id']}")[0]
    _, revoked = api.read(f"{root}/cert/{serial(old['certificate'])}")
    assert revoked["revocation_time"] > 0
    # Gone already: nothing to do.
    assert not mod.run(api, retire, check_mode=False)["changed"]


def test_a_finished_rollover_leaves_nothing_to_do_unless_asked_again(api, mounts, tmp_path):
    added = mod.run(api, params(mounts), check_mode=False, now=NOW)
    api.write(f"{mounts[1]}/config/issuers", {"default": added["new"]["issuer_id"]})
    mod.run(api, params(mounts, "retire", issuer_id=added["old"]["issuer_id"]), check_mode=False)
    record = tmp_path / "intermediate-rollover.json"
    record.write_text(json.dumps({"issuer": added["new"]["issuer_id"]}))
    done = mod.run(api, params(mounts, record=str(record)), check_mode=False)
    assert done["done"] and not done["changed"] and done["steps"] == []
    later = NOW + datetime.timedelta(days=30)
    again = mod.run(api, params(mounts, record=str(record), again=True), check_mode=False, now=later)
    assert again["changed"] and again["old"]["issuer_id"] == added["new"]["issuer_id"]


def test_a_record_of_another_issuer_does_not_stop_a_rollover(api, mounts, tmp_path):
    record = tmp_path / "intermediate-rollover.json"
    record.write_text(json.dumps({"issuer": "someone-else"}))
    assert mod.run(api, params(mounts, record=str(record)), check_mode=False, now=NOW)["changed"]


def test_documentation_matches_the_argument_spec():
    assert_documented(mod)


def test_module_runs_through_ansible(bao, mounts, tmp_path):
    args = {"url": bao["url"], "token": bao["token"], **params(mounts)}
    del args["record"]
    result, output = run_module("openbao_intermediate", args, tmp_path)
    assert result["changed"] and result["steps"] == ["renew", "retire"], result
    assert bao["token"] not in output
