"""The TLS suite list the Go servers' roles share: Mozilla "intermediate" for TLS 1.2, nothing
else Go would offer by default."""

import pytest
from ansible.errors import AnsibleFilterError
from tls import mozilla_intermediate_tls12_suites


def test_go_gets_ecdhe_with_aead_ciphers_only():
    suites = mozilla_intermediate_tls12_suites("go")
    assert len(suites) == len(set(suites)) == 6
    assert all(s.startswith("TLS_ECDHE_") for s in suites)
    assert all(("_GCM_" in s or "_CHACHA20_POLY1305_" in s) and "CBC" not in s for s in suites)
    # Both certificate types a fleet may use: ECDSA (the lab's) and RSA.
    assert {s.split("_WITH_")[0] for s in suites} == {"TLS_ECDHE_ECDSA", "TLS_ECDHE_RSA"}


def test_a_caller_cannot_change_the_shared_list():
    mozilla_intermediate_tls12_suites("go").append("TLS_RSA_WITH_AES_128_CBC_SHA")
    assert "TLS_RSA_WITH_AES_128_CBC_SHA" not in mozilla_intermediate_tls12_suites("go")


def test_an_unknown_library_is_an_error_naming_the_known_ones():
    with pytest.raises(AnsibleFilterError, match="no names for 'openssl'; known: go"):
        mozilla_intermediate_tls12_suites("openssl")
