"""OpenBao serving its PKI over TLS, and a client whose certificate the timer renews on its own."""

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import testinfra

CA, CLIENT = "sl-molecule-openbao", "sl-molecule-openbao-client"
PKI = "/etc/sevenleague/pki"
CURRENT = f"{PKI}/current"
LISTENER_FACT = "/etc/ansible/facts.d/pki_openbao.fact"
LISTENER_TIMER = "sevenleague-pki-renew-openbao"
INVENTORY = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "inventory"
SCENARIO = Path(__file__).resolve().parents[1]
# The client's login: its own role, which accepts its certificate only from its address.
LOGIN = json.dumps({"name": f"host-{CLIENT}"})


def node(name):
    return testinfra.get_host(f"podman://{name}")


@pytest.fixture(scope="module")
def ca():
    return node(CA)


@pytest.fixture(scope="module")
def client():
    return node(CLIENT)


def ca_address(ca):
    return ca.check_output("hostname -I").split()[0]


# The image has no curl: requests go through the host's python3, as the timer's do.
_REQUEST = f"""
import json, ssl, sys, urllib.error, urllib.request
url, body, token, cert, cafile = sys.argv[1:6]
context = ssl.create_default_context(cafile=cafile or "{PKI}/openbao-server-ca.pem")
if cert:
    context.load_cert_chain(cert + "/fullchain.pem", cert + "/key.pem")
request = urllib.request.Request(url, data=body.encode() if body else None, headers={{"X-Vault-Token": token}})
try:
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        print(json.dumps({{"status": answer.status, "body": json.load(answer)}}))
except urllib.error.HTTPError as error:
    print(json.dumps({{"status": error.code, "body": json.load(error)}}))
"""


def request(host, url, body="", token="", cert="", cafile=""):
    """(status, JSON body) of a request from `host`, verifying OpenBao with the host's copy of its CA."""
    answer = json.loads(host.check_output("python3 -c %s %s %s %s %s %s", _REQUEST, url, body, token, cert, cafile))
    return answer["status"], answer["body"]


def health(client, ca):
    return request(client, f"https://{ca_address(ca)}:8200/v1/sys/health")[1]


def test_openbao_runs_initialised_and_unsealed(ca, client):
    assert ca.service("openbao").is_running and ca.service("openbao").is_enabled
    state = health(client, ca)
    assert state["initialized"] and not state["sealed"]


def test_config_and_data_are_private(ca):
    config = ca.file("/etc/openbao/openbao.hcl")
    assert config.user == "root" and config.group == "openbao" and config.mode == 0o640
    data = ca.file("/var/lib/openbao")
    assert data.user == "openbao" and data.mode == 0o700
    key = ca.file("/etc/openbao/tls/current/key.pem")
    assert key.group == "ssl-cert" and key.mode == 0o640
    assert "ssl-cert" in ca.user("openbao").groups


def served_serial(ca, client) -> str:
    """The serial of the certificate OpenBao's listener presents, verified as a client verifies it."""
    out = client.run(
        f"openssl s_client -connect {ca_address(ca)}:8200 -verify_return_error "
        f"-CAfile {PKI}/openbao-server-ca.pem -verify_ip {ca_address(ca)} </dev/null 2>/dev/null"
        f" | openssl x509 -noout -serial"
    )
    assert out.rc == 0, out.stdout + out.stderr
    return out.stdout.strip().split("=", 1)[1].lower()


def test_the_listener_certificate_comes_from_openbao_itself(ca, client):
    # The first one came from the built-in CA; OpenBao's own PKI issued the one it serves.
    issuer = ca.check_output("openssl x509 -in /etc/openbao/tls/current/cert.pem -noout -issuer")
    assert "sevenleague OpenBao intermediate CA" in issuer
    assert served_serial(ca, client) == json.loads(ca.file(LISTENER_FACT).content_string)["serial"]
    timer = ca.service(f"{LISTENER_TIMER}.timer")
    assert timer.is_enabled and timer.is_running


def test_the_listener_timer_renews_it_and_openbao_serves_it_without_a_restart(ca, client):
    before, started = served_serial(ca, client), ca.check_output("systemctl show openbao -p ExecMainStartTimestamp")
    dropin = f"/run/systemd/system/{LISTENER_TIMER}.service.d/force.conf"
    config = "/etc/sevenleague/certificates/openbao.json"
    ca.check_output(
        f"mkdir -p $(dirname {dropin}) && printf '[Service]\\nExecStart=\\n"
        f"ExecStart=/usr/sbin/sevenleague-pki renew --force --config {config}\\n' > {dropin}"
        f" && systemctl daemon-reload"
    )
    try:
        run = ca.run(f"systemctl start {LISTENER_TIMER}.service")
        assert run.rc == 0, ca.run(f"journalctl -u {LISTENER_TIMER}.service --no-pager -n 30").stdout
    finally:
        ca.check_output(f"rm -f {dropin} && systemctl daemon-reload")
    renewed = json.loads(ca.file(LISTENER_FACT).content_string)["serial"]
    assert renewed != before
    # The reload hook made OpenBao read it (SIGHUP): same process, still unsealed, new certificate.
    assert served_serial(ca, client) == renewed
    assert ca.check_output("systemctl show openbao -p ExecMainStartTimestamp") == started
    assert not health(client, ca)["sealed"]


HOLDERS = {
    "ops-a": "molecule-only-holder-a-passphrase",
    "ops-b": "molecule-only-holder-b-passphrase",
    "ops-c": "molecule-only-holder-c-passphrase",
}
SECRETS = INVENTORY / ".openbao"


def unvault(path: Path, passphrase: str) -> dict:
    from ansible.parsing.vault import AnsibleVaultError, VaultLib, VaultSecret

    try:
        return json.loads(VaultLib([("default", VaultSecret(passphrase.encode()))]).decrypt(path.read_bytes()))
    except AnsibleVaultError:
        return {}


def api(method, path, token="", body=None):
    """(status, JSON) of a call from the controller, which the firewall lets in."""
    import requests

    host = testinfra.get_host(f"podman://{CA}")
    answer = requests.request(
        method,
        f"https://{ca_address(host)}:8200/v1/{path}",
        json=body,
        timeout=10,
        headers={"X-Vault-Token": token} if token else {},
        verify=str(SECRETS / "server-ca.pem"),
    )
    return answer.status_code, (answer.json() if answer.content.strip() else {})


def converge(tags: str) -> subprocess.CompletedProcess:
    """The scenario's converge, only the role's steps of `tags`, as an operator reruns them."""
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--tags",
            tags,
            str(SCENARIO / "converge.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def ansible_token() -> str:
    return unvault(SECRETS / "ansible-token.vault", "molecule-only-openbao-passphrase")["token"]


def test_each_holder_has_their_own_shares_under_their_own_passphrase():
    shares = {}
    for name, passphrase in HOLDERS.items():
        path = SECRETS / f"unseal-{name}.vault"
        assert path.read_text().startswith(f"$ANSIBLE_VAULT;1.2;AES256;openbao-{name}")
        assert path.stat().st_mode & 0o077 == 0
        shares[name] = unvault(path, passphrase)["keys_base64"]
        others = [p for n, p in HOLDERS.items() if n != name] + ["molecule-only-openbao-passphrase"]
        assert all(unvault(path, other) == {} for other in others)
    # Five shares dealt in turn: 2, 2 and 1; none held twice.
    assert sorted(len(keys) for keys in shares.values()) == [1, 2, 2]
    assert len({key for keys in shares.values() for key in keys}) == 5
    # No file keeps the root token.
    assert not (SECRETS / "bootstrap.vault").exists() and not (SECRETS / "init.vault").exists()


def test_ansible_works_with_a_token_of_its_own_that_may_do_only_what_the_roles_do():
    token = ansible_token()
    status, answer = api("GET", "auth/token/lookup-self", token)
    assert status == 200
    assert sorted(answer["data"]["policies"]) == ["default", "sevenleague-ansible"]
    assert answer["data"]["period"] > 0 and answer["data"]["orphan"]
    # What only a root token may do stays out of its reach.
    refused = [
        ("POST", "sys/policies/acl/sevenleague-ansible", {"policy": 'path "*" { capabilities = ["sudo"] }'}),
        ("POST", "auth/token/create", {"policies": ["sevenleague-ansible"]}),
        ("POST", "sys/audit/second", {"type": "file", "options": {"file_path": "/tmp/x"}}),
        ("POST", f"auth/cert/certs/host-{CLIENT}", {"token_policies": ["sevenleague-ansible"]}),
        ("GET", "sys/raw/core/keyring", None),
    ]
    for method, path, body in refused:
        assert api(method, path, token, body)[0] == 403, path


def test_the_root_token_was_revoked_and_two_holders_can_make_a_new_one():
    # The procedure roles/openbao/README.md documents: Ansible's token starts it, the shares finish it.
    token = ansible_token()
    status, attempt = api("POST", "sys/generate-root-token/attempt", token, {})
    assert status == 200, attempt
    attempt = attempt["data"]
    keys = (
        unvault(SECRETS / "unseal-ops-a.vault", HOLDERS["ops-a"])["keys_base64"]
        + unvault(SECRETS / "unseal-ops-c.vault", HOLDERS["ops-c"])["keys_base64"]
    )
    for key in keys:
        status, progress = api("POST", "sys/generate-root-token/update", token, {"key": key, "nonce": attempt["nonce"]})
        assert status == 200, progress
        progress = progress["data"]
    assert progress["complete"]
    encoded = base64.b64decode(progress["encoded_token"] + "=" * (-len(progress["encoded_token"]) % 4))
    root = bytes(a ^ b for a, b in zip(encoded, attempt["otp"].encode(), strict=False)).decode()
    try:
        status, accessors = api("LIST", "auth/token/accessors", root)
        assert status == 200
        roots = []
        for accessor in accessors["data"]["keys"]:
            looked = api("POST", "auth/token/lookup-accessor", root, {"accessor": accessor})[1]["data"]
            if "root" in looked["policies"]:
                roots.append(accessor)
        mine = api("GET", "auth/token/lookup-self", root)[1]["data"]["accessor"]
        # The initialisation's root token is gone: the only root token is the one just made.
        assert roots == [mine]
    finally:
        api("POST", "auth/token/revoke-self", root, {})
    assert api("GET", "auth/token/lookup-self", root)[0] == 403


def test_the_cluster_port_is_closed_to_other_hosts(ca, client):
    probe = client.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{ca_address(ca)}/8201'")
    assert probe.rc != 0


def test_the_client_certificate_comes_from_openbao_and_stays_on_the_host(client):
    issuer = client.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -issuer")
    assert "sevenleague OpenBao intermediate CA" in issuer
    verify = client.run(f"cd {CURRENT} && openssl verify -CAfile ca.pem -untrusted chain.pem cert.pem")
    assert verify.rc == 0, verify.stderr
    fact = json.loads(client.file("/etc/ansible/facts.d/pki.fact").content_string)
    assert fact["backend"] == "openbao"
    start = client.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -startdate | cut -d= -f2)" +%s')
    end = client.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)" +%s')
    assert int(end) - int(start) <= 600 + 60


def test_a_login_token_cannot_sign_for_other_names(ca, client):
    url = f"https://{ca_address(ca)}:8200"
    status, login = request(client, f"{url}/v1/auth/cert/login", body=LOGIN, cert=CURRENT)
    assert status == 200, login
    token = login["auth"]["client_token"]
    assert login["auth"]["policies"] == ["sevenleague-host-renew"]
    for role in ("host", f"renew-{CA}"):
        status, answer = request(
            client, f"{url}/v1/pki_int/sign/{role}", token=token, body=json.dumps({"common_name": CA, "csr": "x"})
        )
        assert status == 403 and "permission denied" in json.dumps(answer)


def test_each_host_logs_in_through_its_own_role_bound_to_its_address(ca, client):
    status, listing = api("LIST", "auth/cert/certs", ansible_token())
    assert status == 200, listing
    # The shared role of older releases, which any host's certificate matched, is gone.
    assert sorted(listing["data"]["keys"]) == [f"host-{CA}", f"host-{CLIENT}"]
    role = api("GET", f"auth/cert/certs/host-{CLIENT}", ansible_token())[1]["data"]
    assert role["allowed_common_names"] == [CLIENT]
    assert role["token_bound_cidrs"] == [client.check_output("hostname -I").split()[0]]


def test_a_copied_key_and_certificate_are_refused_from_another_fleet_host(ca, client):
    """Someone with root on the client copies its key and certificate to another host of the fleet
    (here OpenBao's, which the firewall lets in like any fleet host): the login is refused there,
    with or without naming the role, while the same files still log in from the client."""
    stolen = "/root/stolen"
    url = f"https://{ca_address(ca)}:8200/v1/auth/cert/login"
    files = {
        name: base64.b64encode(client.file(f"{CURRENT}/{name}").content).decode()
        for name in ("fullchain.pem", "key.pem")
    }
    files["server-ca.pem"] = base64.b64encode(client.file(f"{PKI}/openbao-server-ca.pem").content).decode()
    try:
        ca.check_output(f"install -d -m 0700 {stolen}")
        for name, content in files.items():
            ca.check_output(f"echo {content} | base64 -d > {stolen}/{name}")
        for body in (LOGIN, "{}"):
            status, answer = request(ca, url, body=body, cert=stolen, cafile=f"{stolen}/server-ca.pem")
            assert status in (400, 403), (body, answer)
            assert "client_token" not in json.dumps(answer)
        status, answer = request(client, url, body=LOGIN, cert=CURRENT)
        assert status == 200, answer
        same = client.check_output(f"sha256sum {CURRENT}/fullchain.pem {CURRENT}/key.pem | cut -d' ' -f1")
        assert same == ca.check_output(f"sha256sum {stolen}/fullchain.pem {stolen}/key.pem | cut -d' ' -f1")
    finally:
        ca.run(f"rm -rf {stolen}")


GONE = "gone.molecule.test"


def csr_for(name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()


def test_a_host_that_left_the_inventory_has_its_certificates_revoked_and_its_roles_removed(client):
    """gone.molecule.test has a renewal role, a login role and a valid certificate, as a host of
    the inventory has; it is not in this inventory, as a host that left is not. The openbao role's
    PKI converge revokes its certificate and removes both roles; the client's stay. The shared login
    role of older releases, which every host's certificate matched, goes too."""
    token = ansible_token()
    renew_role, login_role = f"pki_int/roles/renew-{GONE}", f"auth/cert/certs/host-{GONE}"
    shared = "auth/cert/certs/host"
    try:
        status, answer = api(
            "POST",
            renew_role,
            token,
            {
                "allowed_domains": [GONE],
                "allow_bare_domains": True,
                "key_type": "ec",
                "key_bits": 256,
                "no_store": False,
            },
        )
        assert status in (200, 204), answer
        trust = api("GET", f"auth/cert/certs/host-{CLIENT}", token)[1]["data"]["certificate"]
        body = {"certificate": trust, "allowed_common_names": [GONE], "token_policies": ["sevenleague-host-renew"]}
        status, answer = api("POST", login_role, token, body)
        assert status in (200, 204), answer
        status, answer = api("POST", shared, token, {**body, "allowed_common_names": [CA, CLIENT]})
        assert status in (200, 204), answer
        status, signed = api(
            "POST", f"pki_int/sign/renew-{GONE}", token, {"csr": csr_for(GONE), "common_name": GONE, "ttl": "600s"}
        )
        assert status == 200, signed
        serial = signed["data"]["serial_number"]
        assert api("GET", f"pki_int/cert/{serial}", token)[1]["data"]["revocation_time"] == 0

        run = converge("openbao_init,openbao_pki")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]

        assert api("GET", f"pki_int/cert/{serial}", token)[1]["data"]["revocation_time"] > 0
        assert api("GET", renew_role, token)[0] == 404
        assert api("GET", login_role, token)[0] == 404
        assert api("GET", shared, token)[0] == 404
        # Only the departed host's: the client's current certificate stays valid.
        hexa = client.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -serial").split("=", 1)[1].lower()
        mine = ":".join(hexa[i : i + 2] for i in range(0, len(hexa), 2))
        assert api("GET", f"pki_int/cert/{mine}", token)[1]["data"]["revocation_time"] == 0
        assert api("GET", f"pki_int/roles/renew-{CLIENT}", token)[0] == 200
        assert api("GET", f"auth/cert/certs/host-{CLIENT}", token)[0] == 200
    finally:
        api("DELETE", renew_role, token)
        api("DELETE", login_role, token)
        api("DELETE", shared, token)


AGENT = "sevenleague-pki-renew-host"
AGENT_CONFIG = "/etc/sevenleague/certificates/host.json"
FORCE_DROPIN = f"/run/systemd/system/{AGENT}.service.d/force.conf"


def test_the_timer_runs_the_renewal_agent_on_its_own(client):
    timer = client.service(f"{AGENT}.timer")
    assert timer.is_enabled and timer.is_running
    shown = client.check_output(f"systemctl show {AGENT}.timer -p Triggers -p NextElapseUSecMonotonic")
    assert f"Triggers={AGENT}.service" in shown
    assert "NextElapseUSecMonotonic=infinity" not in shown


@pytest.fixture
def due_now(client):
    """The timer's own unit, renewing whatever the policy says: the next run renews at once."""
    command = client.check_output(f"systemctl show {AGENT}.service -p ExecStart --value")
    assert f"--config {AGENT_CONFIG}" in command
    client.check_output(
        f"mkdir -p $(dirname {FORCE_DROPIN}) && printf '[Service]\\nExecStart=\\n"
        f"ExecStart=/usr/sbin/sevenleague-pki renew --force --config {AGENT_CONFIG}\\n' > {FORCE_DROPIN}"
        f" && systemctl daemon-reload"
    )
    yield
    client.check_output(f"rm -f {FORCE_DROPIN} && systemctl daemon-reload")


def test_the_agent_renews_the_certificate_without_the_controller(client, due_now):
    # What the timer starts, started now rather than waited for: the renewal is
    # due, so the unit must make a new key and certificate and publish them.
    before = client.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -serial")
    before_key = client.check_output(f"openssl pkey -in {CURRENT}/key.pem -pubout")
    run = client.run(f"systemctl start {AGENT}.service")
    assert run.rc == 0, client.run(f"journalctl -u {AGENT}.service --no-pager -n 30").stdout
    after = client.check_output(f"openssl x509 -in {CURRENT}/cert.pem -noout -serial")
    assert after != before, "the timer did not renew a certificate that was due"
    assert client.check_output(f"openssl pkey -in {CURRENT}/key.pem -pubout") != before_key
    verify = client.run(f"cd {CURRENT} && openssl verify -CAfile ca.pem -untrusted chain.pem cert.pem")
    assert verify.rc == 0, verify.stderr
    serial = after.split("=", 1)[1].strip().lower()
    end = client.check_output(f'date -d "$(openssl x509 -in {CURRENT}/cert.pem -noout -enddate | cut -d= -f2)" +%s')
    metrics = client.file("/var/lib/prometheus/node-exporter/sevenleague_pki.prom").content_string
    assert f'sevenleague_certificate_not_after_seconds{{name="host"}} {end}\n' in metrics
    assert json.loads(client.file("/etc/ansible/facts.d/pki.fact").content_string)["serial"] == serial
    journal = client.check_output("journalctl -t sevenleague-pki --no-pager -o cat")
    assert serial in journal.replace(":", "").lower()


def test_a_replaced_key_s_certificate_can_no_longer_log_in(ca, client, due_now):
    # Someone copied the host's key and certificate; then the host renewed with a new key.
    client.check_output(f"rm -rf /root/copied && cp -rL {CURRENT} /root/copied")
    url = f"https://{ca_address(ca)}:8200/v1/auth/cert/login"
    assert request(client, url, body=LOGIN, cert="/root/copied")[0] == 200
    old_release = client.file(CURRENT).linked_to
    run = client.run(f"systemctl start {AGENT}.service")
    assert run.rc == 0, client.run(f"journalctl -u {AGENT}.service --no-pager -n 30").stdout
    assert client.file(CURRENT).linked_to != old_release
    # The host revoked the old certificate with its key; the login asks OCSP and refuses it.
    assert client.file(f"{old_release}/revoked").content_string.strip() == "revoked"
    status, answer = request(client, url, body=LOGIN, cert="/root/copied")
    assert status in (400, 403), answer
    # The new certificate still logs in.
    assert request(client, url, body=LOGIN, cert=CURRENT)[0] == 200


def test_a_failed_renewal_keeps_the_certificate_and_says_why(client):
    before = client.file(CURRENT).linked_to
    config = json.loads(client.file(AGENT_CONFIG).content_string)
    config["openbao"].update(url="https://127.0.0.1:9", attempts=2, backoff_initial=1)
    client.run(f"echo '{json.dumps(config)}' > /tmp/broken.json")
    run = client.run("sevenleague-pki renew --config /tmp/broken.json --force")
    assert run.rc == 1
    assert "127.0.0.1:9" in run.stderr
    assert client.file(CURRENT).linked_to == before


def test_a_host_gets_only_its_own_names_and_address_from_its_renewal_role(ca, client):
    """What a host with root can ask with its own login: another host's name, an address that is
    not its own, a wildcard. OpenBao refuses each; only the host's own names pass."""
    url = f"https://{ca_address(ca)}:8200"
    status, login = request(client, f"{url}/v1/auth/cert/login", body=LOGIN, cert=CURRENT)
    assert status == 200, login
    token = login["auth"]["client_token"]
    own = client.check_output(
        f"openssl x509 -in {CURRENT}/cert.pem -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p'"
    )
    csr = client.check_output(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-keyout /dev/null -subj /CN=ignored 2>/dev/null"
    )

    def sign(**names):
        return request(
            client,
            f"{url}/v1/pki_int/sign/renew-{own}",
            token=token,
            body=json.dumps({"csr": csr, "ttl": "600", **names}),
        )

    status, answer = sign(common_name=own)
    assert status == 200, answer
    for names in (
        {"common_name": CA},
        {"common_name": own, "alt_names": CA},
        {"common_name": own, "ip_sans": "10.99.99.99"},
        {"common_name": "*.molecule.test"},
    ):
        status, answer = sign(**names)
        assert status == 400 and "not allowed" in json.dumps(answer), (names, answer)


def test_every_request_lands_in_the_audit_log_with_its_secrets_hashed(ca, client):
    url = f"https://{ca_address(ca)}:8200"
    status, login = request(client, f"{url}/v1/auth/cert/login", body=LOGIN, cert=CURRENT)
    assert status == 200, login
    log = ca.file("/var/log/openbao/audit.log")
    assert log.user == "openbao" and log.mode == 0o640
    entries = [json.loads(line) for line in log.content_string.splitlines() if line.strip()]
    logins = [e for e in entries if e["type"] == "response" and e["request"]["path"] == "auth/cert/login"]
    assert logins, "no login in the audit log"
    token = login["auth"]["client_token"]
    assert all(token not in json.dumps(e) for e in entries), "a token in clear in the audit log"
    assert logins[-1]["auth"]["client_token"].startswith("hmac-sha256:")
    assert ca.file("/etc/logrotate.d/openbao-audit").contains("/var/log/openbao/audit.log")


SOCKET = "/run/openbao/api.sock"
GATE = "/usr/local/sbin/sevenleague-openbao-gate"
REFUSED = "ConnectionRefusedError"

# What a rooted host sends to keep OpenBao sealed: the answer's status, or why there was none.
_UNSEAL = """
import socket, ssl, sys, urllib.error, urllib.request
url, body = sys.argv[1:3]
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
try:
    with urllib.request.urlopen(urllib.request.Request(url, body.encode(), method="PUT"), context=context, timeout=3) as a:
        print(a.status)
except urllib.error.HTTPError as error:
    print(error.code)
except urllib.error.URLError as error:
    print(type(error.reason).__name__)
"""
# The same through the unix listener, by a local user.
_SOCKET = f"""
import socket
try:
    socket.socket(socket.AF_UNIX).connect("{SOCKET}")
    print("connected")
except OSError as error:
    print(type(error).__name__)
"""


def unseal_attempt(host, address: str, body: str, user: str = "root") -> str:
    url = f"https://{address}:8200/v1/sys/unseal"
    return host.check_output("runuser -u %s -- python3 -c %s %s %s", user, _UNSEAL, url, body)


def seal_status(ca) -> dict:
    """OpenBao's own word, through the unix listener (bao status exits 2 while sealed)."""
    return json.loads(ca.run(f"BAO_ADDR=unix://{SOCKET} bao status -format=json").stdout)


def test_no_fleet_host_or_local_user_can_reset_an_unseal_and_the_role_s_unseal_opens_the_port(ca, client):
    """After a restart one holder has given a share; a rooted fleet host then sends {"reset": true} and
    a bogus share, and so does a local user on OpenBao's host (loopback, the unix listener), also after
    the baseline's firewall was reloaded and restarted. None reaches OpenBao: the port refuses at once,
    the share stays counted. The role's unseal, through the unix listener, finishes and opens the port."""
    address = ca_address(ca)
    share = unvault(SECRETS / "unseal-ops-a.vault", HOLDERS["ops-a"])["keys_base64"][0]
    bogus = json.dumps({"key": base64.b64encode(b"\x01" * 33).decode()})
    ca.check_output("systemctl restart openbao")
    try:
        assert seal_status(ca)["sealed"] and ca.check_output(f"{GATE} status") == "closed"
        ca.check_output(f"BAO_ADDR=unix://{SOCKET} bao operator unseal {share}")
        assert seal_status(ca)["progress"] == 1
        for body in ('{"reset": true}', bogus):
            assert unseal_attempt(client, address, body) == REFUSED
            assert unseal_attempt(ca, "127.0.0.1", body, user="nobody") == REFUSED
        assert ca.check_output("runuser -u nobody -- python3 -c %s", _SOCKET) == "PermissionError"
        ca.check_output("systemctl reload nftables && systemctl restart nftables")
        assert unseal_attempt(client, address, '{"reset": true}') == REFUSED
        assert seal_status(ca)["progress"] == 1 and seal_status(ca)["sealed"]
        # Opening is refused while sealed.
        assert ca.run(f"{GATE} open").rc == 1 and ca.check_output(f"{GATE} status") == "closed"
    finally:
        run = converge("openbao_init")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert not seal_status(ca)["sealed"] and ca.check_output(f"{GATE} status") == "open"
    assert not health(client, ca)["sealed"]
    # Once unsealed, a reset is refused by OpenBao itself.
    assert unseal_attempt(client, address, '{"reset": true}') == "400"
