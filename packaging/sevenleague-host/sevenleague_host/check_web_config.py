"""Check an exporter-toolkit web configuration before node_exporter or Alertmanager reads it.

    sevenleague-check-web-config FILE

node_exporter has no check mode of its own, and promtool (whose
`check web-config` does this) is installed on the Prometheus servers only.
The file is JSON, which is YAML too. Checked: the keys exporter-toolkit knows,
the values it accepts, that the certificate, its key and the client CA
load and belong together, and that every basic_auth_users entry is a bcrypt hash. Exit 1 with the reasons on stderr.
"""

import json
import re
import ssl
import sys

TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
}
CLIENT_AUTH = {
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
}
VERSIONS = {"TLS10", "TLS11", "TLS12", "TLS13"}
# Go's crypto/tls names of the suites a TLS 1.2 server may be limited to.
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
CURVES = {"CurveP256", "CurveP384", "CurveP521", "X25519"}
# exporter-toolkit compares passwords with bcrypt only: anything else locks the user out.
BCRYPT = re.compile(r"^\$2[aby]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


def user_problems(users) -> list[str]:
    if not isinstance(users, dict):
        return ["basic_auth_users is not a mapping"]
    found = []
    for name, hashed in sorted(users.items()):
        if not name or ":" in name:
            found.append(f"basic_auth_users: {name!r} is not a user name")
        if not isinstance(hashed, str) or not BCRYPT.match(hashed):
            found.append(f"basic_auth_users: the password of {name!r} is not a bcrypt hash")
    return found


def problems(config) -> list[str]:
    if not isinstance(config, dict):
        return ["the configuration is not a mapping"]
    found = [f"unknown key {key!r}" for key in sorted(set(config) - TOP_KEYS)]
    if "basic_auth_users" in config:
        found += user_problems(config["basic_auth_users"])
    tls = config.get("tls_server_config")
    if tls is None:
        return found
    if not isinstance(tls, dict):
        return [*found, "tls_server_config is not a mapping"]
    found += [f"tls_server_config: unknown key {key!r}" for key in sorted(set(tls) - TLS_KEYS)]
    for key in ("cert_file", "key_file"):
        if not isinstance(tls.get(key), str) or not tls[key]:
            found.append(f"tls_server_config.{key} is missing")
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        found.append(f"client_auth_type {auth!r} is not one of {', '.join(sorted(CLIENT_AUTH))}")
    if auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and not tls.get("client_ca_file"):
        found.append(f"client_auth_type {auth} needs client_ca_file")
    for key in ("min_version", "max_version"):
        if key in tls and tls[key] not in VERSIONS:
            found.append(f"{key} {tls[key]!r} is not one of {', '.join(sorted(VERSIONS))}")
    found += [f"unknown cipher {name!r}" for name in tls.get("cipher_suites") or [] if name not in CIPHERS]
    found += [f"unknown curve {name!r}" for name in tls.get("curve_preferences") or [] if name not in CURVES]
    if not found:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # Fails unless the certificate and the key load and match.
            context.load_cert_chain(tls["cert_file"], tls["key_file"])
        except (OSError, ssl.SSLError) as error:
            found.append(f"certificate {tls['cert_file']} with key {tls['key_file']}: {error}")
        if tls.get("client_ca_file"):
            try:
                context.load_verify_locations(cafile=tls["client_ca_file"])
            except (OSError, ssl.SSLError) as error:
                found.append(f"client_ca_file {tls['client_ca_file']}: {error}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"{argv[1]}: {error}", file=sys.stderr)
        return 1
    found = problems(config)
    for problem in found:
        print(f"{argv[1]}: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
