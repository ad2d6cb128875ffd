"""Mozilla's "intermediate" TLS 1.2 cipher suites, as Go's crypto/tls names them (the IANA names).

    cipher_suites: "{{ 'go' | mozilla_intermediate_tls12_suites }}"

Go offers CBC suites besides these by default, so every Go server the roles configure (OpenBao's
listener, node_exporter's web configuration) names them; the list lives here once. TLS 1.3's
suites are not configurable in Go and are all AEAD. Mozilla's list also has the DHE-RSA suites,
which Go does not implement.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# ECDHE key exchange with an AEAD cipher, in Mozilla's order of preference (server side TLS 5.7).
_INTERMEDIATE_TLS12 = {
    "go": [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ],
}


def mozilla_intermediate_tls12_suites(library: str) -> list[str]:
    """The suites, named as `library` takes them."""
    if library not in _INTERMEDIATE_TLS12:
        raise AnsibleFilterError(
            f"mozilla_intermediate_tls12_suites: no names for {library!r}; "
            f"known: {', '.join(sorted(_INTERMEDIATE_TLS12))}"
        )
    return list(_INTERMEDIATE_TLS12[library])


class FilterModule:
    def filters(self):
        return {"mozilla_intermediate_tls12_suites": mozilla_intermediate_tls12_suites}
