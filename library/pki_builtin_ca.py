#!/usr/bin/python
"""The built-in CA: a root and an intermediate kept on the controller, signing hosts' CSRs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_builtin_ca
short_description: Keep a two-level internal CA on the controller and sign hosts' CSRs with it
description:
  - "The built-in CA backend of sevenleague's PKI. Runs on the controller (C(delegate_to: localhost));
    hosts generate their own keys and only their CSRs travel here."
  - C(state=ca) makes sure a root CA (ECDSA P-384) and an intermediate CA (ECDSA P-256) exist in
    O(ca_dir). An existing, consistent CA is never replaced; nothing is regenerated automatically
    (rollover is a playbook of its own), but RV(intermediate_renew_needed) says when the intermediate
    has less than a third of its lifetime left. Only the derived C(chain.pem), the file modes and the
    keys' encryption (see below) are repaired.
  - "Both keys are encrypted at rest: PKCS#8 PEM (C(ENCRYPTED PRIVATE KEY)) with PBES2,
    PBKDF2-HMAC-SHA256 at 600000 iterations (OWASP 2023) and AES-256-CBC, which
    C(openssl pkey -in root.key) also reads. With O(state=ca), a key that is unencrypted or encrypted
    with a weaker KDF (the 2048 iterations of earlier versions) is re-encrypted in place with the
    given passphrase: the new file replaces the old only after it decrypted to the same key. The
    certificates stay as they are; RV(rekeyed) names the keys."
  - C(state=signed) signs O(csr) with the intermediate for exactly O(sans), for O(ttl) seconds.
    It refuses a CSR whose signature does not verify, a CSR that asks for other SANs than O(sans),
    a SAN outside O(allowed_domains)/O(allowed_networks), a O(ttl) above O(max_ttl), and a key
    weaker than ECDSA P-256 or RSA-2048. The CSR's subject and extensions are ignored; the CA sets
    them. Every call issues a new certificate; the host's C(sevenleague-pki status) decides first.
  - "Files in O(ca_dir) (mode 0700): C(root.crt), C(root.key), C(intermediate.crt),
    C(intermediate.key) (keys 0600), C(chain.pem) (intermediate, then root). All are written
    atomically, under a lock (C(.lock)), so parallel runs cannot mix two CAs."
requirements:
  - cryptography >= 38 on the controller
options:
  state:
    description:
      - C(ca) ensures the CA exists, C(signed) issues a certificate.
    type: str
    required: true
    choices: [ca, signed]
  ca_dir:
    description:
      - Directory of the CA on the controller. Keep it out of version control.
    type: path
    required: true
  ca_name:
    description:
      - Organization of the CA certificates; the CNs are "NAME Root CA" and "NAME Intermediate CA".
      - Used only when the CA is created.
    type: str
    default: sevenleague
  root_passphrase:
    description:
      - Passphrase that encrypts the root CA key at rest. Required with O(state=ca).
    type: str
  intermediate_passphrase:
    description:
      - Passphrase that encrypts the intermediate CA key at rest. Required with O(state=ca), and with
        O(state=signed) to decrypt the key. May differ from O(root_passphrase), so that signing needs no
        root secret.
    type: str
  root_lifetime_days:
    description:
      - Lifetime of a new root CA, in days. Used only when the CA is created.
    type: int
    default: 3650
  intermediate_lifetime_days:
    description:
      - Lifetime of a new intermediate CA, in days (never beyond the root's). Used only when the CA is created.
    type: int
    default: 365
  allowed_domains:
    description:
      - DNS domains the CA issues for; a SAN must equal one or lie below it.
      - With O(state=ca) they become the permitted DNS subtrees of the CA's name constraints, so even a
        stolen intermediate key cannot make certificates that clients accept for other names.
    type: list
    elements: str
    default: []
  allowed_networks:
    description:
      - IP networks (CIDR) the CA issues IP SANs for. Empty means no IP SANs.
      - With O(state=ca) they become the permitted IP subtrees of the name constraints.
    type: list
    elements: str
    default: []
  allow_wildcard:
    description:
      - Whether a SAN may be a wildcard (C(*.example.test)).
    type: bool
    default: false
  csr:
    description:
      - The host's certificate signing request, PEM. Required with O(state=signed).
    type: str
  sans:
    description:
      - The names the certificate is for (DNS names or IP addresses); the first is also the CN.
        Required with O(state=signed).
    type: list
    elements: str
  ttl:
    description:
      - Lifetime of the certificate in seconds (at least 60). Clipped to the intermediate's expiry.
    type: int
    default: 86400
  max_ttl:
    description:
      - The longest O(ttl) this CA grants; a longer request fails.
    type: int
    default: 604800
notes:
  - Supports check mode. With O(state=ca) nothing is written; with O(state=signed) every check runs
    but nothing is signed, and RV(certificate) is empty.
author: sevenleague
"""

EXAMPLES = r"""
- name: Ensure the built-in CA exists
  pki_builtin_ca:
    state: ca
    ca_dir: "{{ pki_builtin_ca_dir }}"
    root_passphrase: "{{ vault_pki_root_passphrase }}"
    intermediate_passphrase: "{{ vault_pki_intermediate_passphrase }}"
    allowed_domains: [sevenleague.test]
    allowed_networks: [10.213.7.0/24]
  delegate_to: localhost
  run_once: true

- name: Sign the host's CSR
  pki_builtin_ca:
    state: signed
    ca_dir: "{{ pki_builtin_ca_dir }}"
    intermediate_passphrase: "{{ vault_pki_intermediate_passphrase }}"
    csr: "{{ __pki_csr.csr }}"
    sans: "{{ pki_sans }}"
    ttl: 86400
    allowed_domains: [sevenleague.test]
    allowed_networks: [10.213.7.0/24]
  delegate_to: localhost
  register: __pki_signed
"""

RETURN = r"""
created:
  description: Whether the CA was created by this run (O(state=ca)).
  returned: state is ca
  type: bool
root_certificate:
  description: The root CA certificate, PEM (the trust anchor to distribute).
  returned: state is ca and the CA exists
  type: str
root:
  description: Facts about the root CA certificate (as RV(info)).
  returned: state is ca and the CA exists
  type: dict
intermediate:
  description: Facts about the intermediate CA certificate (as RV(info)).
  returned: state is ca and the CA exists
  type: dict
rekeyed:
  description:
    - The key files re-encrypted with today's KDF by this run (in check mode, those that would be).
  returned: state is ca
  type: list
  elements: str
  sample: [root.key, intermediate.key]
intermediate_renew_needed:
  description: Whether the intermediate has less than a third of its lifetime left (or expired).
  returned: state is ca
  type: bool
intermediate_renew_reason:
  description: Why, or until when the intermediate is fine.
  returned: state is ca
  type: str
  sample: "valid: renews after 2026-09-01T10:00:00Z"
certificate:
  description: The new certificate, PEM; empty in check mode.
  returned: state is signed
  type: str
chain:
  description: The intermediate CA certificate, PEM; with O(state=ca), intermediate then root.
  returned: state is signed, or state is ca and the CA exists
  type: str
ca:
  description: The root CA certificate, PEM.
  returned: state is signed
  type: str
ttl_clipped:
  description: Whether the certificate ends earlier than asked because the intermediate expires first.
  returned: state is signed
  type: bool
info:
  description: Facts about the new certificate; empty in check mode.
  returned: state is signed
  type: dict
  contains:
    serial:
      description: Serial number, lowercase hex.
      type: str
    not_before:
      description: Start of validity, ISO 8601 UTC.
      type: str
      sample: "2026-01-01T00:00:00Z"
    not_after:
      description: End of validity, ISO 8601 UTC.
      type: str
    sans:
      description: SANs, sorted.
      type: list
      elements: str
    issuer:
      description: Issuer DN (RFC 4514).
      type: str
    subject:
      description: Subject DN (RFC 4514).
      type: str
    fingerprint_sha256:
      description: SHA-256 of the DER certificate, lowercase hex.
      type: str
"""

import base64
import contextlib
import dataclasses
import datetime
import fcntl
import ipaddress
import os
import tempfile


try:
    from ansible.module_utils.sevenleague_pki import (
        CLOCK_SKEW_TOLERANCE, DEFAULT_RENEW_FRACTION, HAS_CRYPTOGRAPHY, PKIError, cert_info, run_ansible_module,
        check_sans_allowed, general_name_str, is_signed_by, iso, lifetime_decision, not_after, not_before,
        parse_sans, sans_of)
except ImportError:  # pytest imports this file directly, where Ansible's module_utils namespace is absent
    from sevenleague_pki import (
        CLOCK_SKEW_TOLERANCE, DEFAULT_RENEW_FRACTION, HAS_CRYPTOGRAPHY, PKIError, cert_info, run_ansible_module,
        check_sans_allowed, general_name_str, is_signed_by, iso, lifetime_decision, not_after, not_before,
        parse_sans, sans_of)

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc
ROOT_CERT = "root.crt"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.crt"
INTERMEDIATE_KEY = "intermediate.key"
CHAIN = "chain.pem"
CA_FILES = (ROOT_KEY, ROOT_CERT, INTERMEDIATE_KEY, INTERMEDIATE_CERT)  # the order they are written in
LOCK = ".lock"
# Hosts whose clocks run a little behind still accept a certificate issued this minute.
CLOCK_SKEW = CLOCK_SKEW_TOLERANCE
MIN_TTL = 60
ACCEPTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
MIN_RSA_BITS = 2048

# The CA keys at rest: PKCS#8 EncryptedPrivateKeyInfo (RFC 5958) with PBES2 (RFC 8018),
# PBKDF2-HMAC-SHA256 and AES-256-CBC, which cryptography and `openssl pkey` read.
# 600 000 iterations is OWASP's recommendation for PBKDF2-HMAC-SHA256 (Password Storage Cheat Sheet,
# 2023); one derivation takes about 0.08 s on a 2-core VM, paid once per key and module run.
# cryptography's BestAvailableEncryption fixes 2048 iterations and has no knob for PKCS#8, hence the
# few lines of DER below. scrypt would resist GPUs better, but OpenSSL 3 caps scrypt at 32 MiB, too
# little for a worthwhile N, so an operator could not open the key by hand.
KDF_ITERATIONS = 600_000
KDF_SALT_BYTES = 16
_MIN_SALT_BYTES = 8  # RFC 8018's minimum, what `openssl pkcs8 -topk8` writes: such a key is not rewritten
_AES_BLOCK_BYTES = 16
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_OID_HMAC_SHA256 = "1.2.840.113549.2.9"
# A PRF at least as strong as the one written; a key made with one of these by hand is not rewritten.
_STRONG_PRFS = (_OID_HMAC_SHA256, "1.2.840.113549.2.10", "1.2.840.113549.2.11")  # SHA-256, -384, -512
_PEM_ENCRYPTED_KEY = "ENCRYPTED PRIVATE KEY"


@dataclasses.dataclass
class CA:
    root_cert: x509.Certificate
    intermediate_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey | None = None

    def pem(self, cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()


# --- files ------------------------------------------------------------------------------------

def write_atomic(path: str, data: bytes, mode: int, verify=None) -> None:
    """Replace `path` with `data` in one step; the file never exists with looser permissions.

    Not module.atomic_move: it gives a new file the umask's default mode after the rename, which
    would leave a fresh private key group/world-readable until a later chmod. `verify`, if given, is
    called with the written temporary file's path before the rename; if it raises, `path` stays as it was.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _fix_mode(path: str, mode: int, check_mode: bool) -> bool:
    if os.stat(path).st_mode & 0o777 == mode:
        return False
    if not check_mode:
        os.chmod(path, mode)
    return True


@contextlib.contextmanager
def _locked(ca_dir: str):
    # A play may run state=ca for many hosts at once; two creators must not interleave their files.
    fd = os.open(os.path.join(ca_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _load_cert_file(path: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise PKIError(f"{what} certificate in {path} is not a PEM certificate: {exc}") from None


def _load_key_file(path: str, passphrase: str | None, what: str, option: str, plain_ok: bool = False):
    """The key in `path`; an unencrypted one only with `plain_ok` (state=ca, which then encrypts it)."""
    data = _read(path)
    encrypted = b"ENCRYPTED" in data  # PKCS#8 "ENCRYPTED PRIVATE KEY" and legacy "Proc-Type: 4,ENCRYPTED"
    if encrypted and not passphrase:
        raise PKIError(f"{what} key in {path} is encrypted: give its passphrase ({option})")
    if not encrypted and not plain_ok:
        raise PKIError(f"{what} key in {path} is not encrypted: run state=ca with {option}, which encrypts it")
    try:
        return serialization.load_pem_private_key(data, password=passphrase.encode() if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise PKIError(f"{what} key in {path} cannot be decrypted with the given passphrase") from None
        raise PKIError(f"{what} key in {path} is not a PEM private key: {exc}") from None


# --- keys at rest ----------------------------------------------------------------------------

def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # non-negative: sign bit clear


def _der_oid(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = b""
    for arc in (40 * first + second, *rest):
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | arc & 0x7F)
        body += bytes(reversed(chunk))
    return _der(0x06, body)


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) pairs of the DER elements in `data`, one level deep."""
    items, pos = [], 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        if pos + length > len(data):
            raise ValueError("truncated DER")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return items


def _pem_body(data: bytes, label: str) -> bytes:
    text = data.decode("ascii")
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if begin not in text or end not in text:
        raise ValueError(f"no {label} PEM block")
    return base64.b64decode("".join(text.split(begin, 1)[1].split(end, 1)[0].split()), validate=True)


def _key_pem(key, passphrase: str) -> bytes:
    """`key` as PKCS#8 PEM, encrypted with PBES2: PBKDF2-HMAC-SHA256 (KDF_ITERATIONS) and AES-256-CBC."""
    if not passphrase:
        raise PKIError("a CA key is never written unencrypted: its passphrase is empty")
    salt, iv = os.urandom(KDF_SALT_BYTES), os.urandom(_AES_BLOCK_BYTES)
    secret = PBKDF2HMAC(hashes.SHA256(), 32, salt, KDF_ITERATIONS).derive(passphrase.encode())
    padder = padding.PKCS7(8 * _AES_BLOCK_BYTES).padder()
    plain = padder.update(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())) + padder.finalize()
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(plain) + encryptor.finalize()
    kdf = _der(0x30, _der_oid(_OID_PBKDF2) + _der(0x30, _der(0x04, salt) + _der_int(KDF_ITERATIONS)
                                                   + _der(0x30, _der_oid(_OID_HMAC_SHA256) + b"\x05\x00")))
    scheme = _der(0x30, _der_oid(_OID_AES256_CBC) + _der(0x04, iv))
    algorithm = _der(0x30, _der_oid(_OID_PBES2) + _der(0x30, kdf + scheme))
    body = base64.b64encode(_der(0x30, algorithm + _der(0x04, sealed))).decode()
    lines = [body[start:start + 64] for start in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {_PEM_ENCRYPTED_KEY}-----", *lines, f"-----END {_PEM_ENCRYPTED_KEY}-----",
                      ""]).encode()


def _kdf_is_current(data: bytes) -> bool:
    """Whether the PEM key `data` is encrypted at least as strongly as _key_pem encrypts.

    PBES2 with PBKDF2 (a SHA-2 PRF, at least KDF_ITERATIONS, a salt of at least 8 bytes)
    and AES-256-CBC. Anything else (unencrypted, 2048 iterations, legacy PEM encryption) is not.
    """
    try:
        ((_, info),) = _der_items(_pem_body(data, _PEM_ENCRYPTED_KEY))
        algorithm, _ = _der_items(info)
        pbes2, params = _der_items(algorithm[1])
        kdf, scheme = _der_items(params[1])
        kdf_oid, kdf_params = _der_items(kdf[1])
        salt, iterations, *optional = _der_items(kdf_params[1])
        scheme_oid = _der_items(scheme[1])[0]
        # The PRF is last; absent, it is HMAC-SHA1.
        prf_oid = _der_items(optional[-1][1])[0] if optional and optional[-1][0] == 0x30 else None
    except (ValueError, IndexError, UnicodeDecodeError):
        return False
    return (_der(*pbes2) == _der_oid(_OID_PBES2) and _der(*kdf_oid) == _der_oid(_OID_PBKDF2)
            and _der(*scheme_oid) == _der_oid(_OID_AES256_CBC)
            and salt[0] == 0x04 and len(salt[1]) >= _MIN_SALT_BYTES
            and iterations[0] == 0x02 and int.from_bytes(iterations[1], "big") >= KDF_ITERATIONS
            and prf_oid is not None and any(_der(*prf_oid) == _der_oid(oid) for oid in _STRONG_PRFS))


def _rekey(path: str, key, passphrase: str) -> None:
    """Re-encrypt the key in `path` with _key_pem; the file switches only once the new one proves right."""
    der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    expected = key.private_bytes(*der)

    def verify(tmp: str) -> None:
        written = _read(tmp)
        try:
            again = serialization.load_pem_private_key(written, password=passphrase.encode())
        except (ValueError, TypeError):
            again = None
        if again is None or again.private_bytes(*der) != expected or not _kdf_is_current(written):
            raise PKIError(f"re-encrypting {path} failed: the new file did not decrypt to the same key; "
                           f"the old file is unchanged")

    write_atomic(path, _key_pem(key, passphrase), 0o600, verify=verify)


def _same_key(private_key, cert: x509.Certificate) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return private_key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


# --- the CA -----------------------------------------------------------------------------------

# With no permitted IP subtree, RFC 5280 leaves IP addresses unconstrained: exclude them all instead.
_EVERY_ADDRESS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def _name_constraints(allowed_domains, allowed_networks):
    permitted = [x509.DNSName(domain.strip().lower().strip(".")) for domain in allowed_domains]
    permitted += [x509.IPAddress(ipaddress.ip_network(net, strict=False)) for net in allowed_networks]
    excluded = None if allowed_networks else [x509.IPAddress(net) for net in _EVERY_ADDRESS]
    return x509.NameConstraints(permitted_subtrees=permitted or None, excluded_subtrees=excluded)


def _constraint_names(constraints: x509.NameConstraints | None) -> set[str]:
    """The subtrees, permitted ones by name and excluded ones as "not <name>"."""
    if constraints is None:
        return set()
    return ({general_name_str(name) for name in constraints.permitted_subtrees or []}
            | {f"not {general_name_str(name)}" for name in constraints.excluded_subtrees or []})


def _cert_constraints(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _ca_cert(subject, issuer, public_key, signing_key, start, end, path_length, constraints, issuer_ski):
    ca_usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                             encipher_only=False, decipher_only=False)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(ca_usage, critical=True)
               .add_extension(ski, critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski or ski),
                              critical=False))
    if constraints is not None:
        # RFC 5280: name constraints MUST be critical, so a client that cannot check them refuses the chain.
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(signing_key, _hash_for(signing_key))


def _hash_for(key):
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _create_ca(paths, name, root_passphrase, intermediate_passphrase, constraints, root_days,
               intermediate_days, now) -> None:
    start = now - CLOCK_SKEW
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                           x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA")])
    root_end = now + datetime.timedelta(days=root_days)
    # pathlen 1: the root signs intermediates, the intermediates sign only end entities.
    root = _ca_cert(root_name, root_name, root_key.public_key(), root_key, start, root_end, 1, constraints, None)

    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                                   x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Intermediate CA")])
    intermediate_end = min(now + datetime.timedelta(days=intermediate_days), root_end)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    intermediate = _ca_cert(intermediate_name, root_name, intermediate_key.public_key(), root_key, start,
                            intermediate_end, 0, constraints, root_ski)

    pem = serialization.Encoding.PEM
    # Keys first: a crash leaves a partial CA, which ensure_ca refuses to complete rather than overwrite.
    write_atomic(paths[ROOT_KEY], _key_pem(root_key, root_passphrase), 0o600)
    write_atomic(paths[ROOT_CERT], root.public_bytes(pem), 0o644)
    write_atomic(paths[INTERMEDIATE_KEY], _key_pem(intermediate_key, intermediate_passphrase), 0o600)
    write_atomic(paths[INTERMEDIATE_CERT], intermediate.public_bytes(pem), 0o644)


def _validate(paths, root_cert, intermediate_cert, now) -> None:
    if not is_signed_by(root_cert, root_cert):
        raise PKIError(f"root CA certificate in {paths[ROOT_CERT]} is not self-signed")
    if now >= not_after(root_cert):
        raise PKIError(f"root CA in {paths[ROOT_CERT]} expired at {iso(not_after(root_cert))}: "
                       f"a new CA is needed")
    if not is_signed_by(intermediate_cert, root_cert):
        raise PKIError(f"intermediate CA certificate in {paths[INTERMEDIATE_CERT]} was not issued by the root "
                       f"CA in {paths[ROOT_CERT]}")


def _paths(ca_dir: str) -> dict[str, str]:
    return {name: os.path.join(ca_dir, name) for name in (*CA_FILES, CHAIN)}


def ensure_ca(ca_dir: str, *, root_passphrase: str, intermediate_passphrase: str,
              name: str = "sevenleague", allowed_domains=(), allowed_networks=(), root_days: int = 3650,
              intermediate_days: int = 365, now: datetime.datetime | None = None,
              check_mode: bool = False) -> dict:
    """Make sure a consistent root + intermediate CA exists in `ca_dir`; never replace one."""
    if not root_passphrase:
        raise PKIError("root_passphrase is empty: the root CA key is always encrypted at rest")
    if not intermediate_passphrase:
        raise PKIError("intermediate_passphrase is empty: the intermediate CA key is always encrypted at rest")
    if root_days < 1 or intermediate_days < 1:
        raise PKIError("root_lifetime_days and intermediate_lifetime_days must be at least 1")
    now = now or datetime.datetime.now(UTC)
    constraints = _name_constraints(allowed_domains, allowed_networks)
    paths = _paths(ca_dir)
    result = {"changed": False, "created": False, "rekeyed": [], "warnings": []}

    if not os.path.isdir(ca_dir):
        if check_mode:
            return {**result, "changed": True, "created": True, "intermediate_renew_needed": False,
                    "intermediate_renew_reason": "the CA would be created"}
        os.makedirs(ca_dir, mode=0o700)
        result["changed"] = True
    result["changed"] |= _fix_mode(ca_dir, 0o700, check_mode)

    with contextlib.nullcontext() if check_mode else _locked(ca_dir):
        present = [filename for filename in CA_FILES if os.path.exists(paths[filename])]
        if not present:
            if check_mode:
                return {**result, "changed": True, "created": True, "intermediate_renew_needed": False,
                        "intermediate_renew_reason": "the CA would be created"}
            _create_ca(paths, name, root_passphrase, intermediate_passphrase, constraints, root_days,
                       intermediate_days, now)
            result.update(changed=True, created=True)
        elif len(present) < len(CA_FILES):
            missing = [filename for filename in CA_FILES if filename not in present]
            raise PKIError(f"{ca_dir} holds a partial CA ({', '.join(present)}) without {', '.join(missing)}; "
                           f"it is never completed automatically: restore the missing files from a backup, "
                           f"or move the directory away to create a new CA")

        root_cert = _load_cert_file(paths[ROOT_CERT], "root CA")
        intermediate_cert = _load_cert_file(paths[INTERMEDIATE_CERT], "intermediate CA")
        # Decrypting both keys proves the passphrases and that the files on disk belong together.
        # An unencrypted key (the intermediate's, before it had a passphrase) is encrypted below.
        root_key = _load_key_file(paths[ROOT_KEY], root_passphrase, "root CA", "root_passphrase", plain_ok=True)
        intermediate_key = _load_key_file(paths[INTERMEDIATE_KEY], intermediate_passphrase, "intermediate CA",
                                          "intermediate_passphrase", plain_ok=True)
        if not _same_key(root_key, root_cert):
            raise PKIError(f"root CA key in {paths[ROOT_KEY]} does not belong to {paths[ROOT_CERT]}")
        if not _same_key(intermediate_key, intermediate_cert):
            raise PKIError(f"intermediate CA key in {paths[INTERMEDIATE_KEY]} does not belong to "
                           f"{paths[INTERMEDIATE_CERT]}")
        _validate(paths, root_cert, intermediate_cert, now)

        for key_file, key, passphrase in ((ROOT_KEY, root_key, root_passphrase),
                                          (INTERMEDIATE_KEY, intermediate_key, intermediate_passphrase)):
            if not _kdf_is_current(_read(paths[key_file])):
                if not check_mode:
                    _rekey(paths[key_file], key, passphrase)
                result["rekeyed"].append(key_file)
                result["changed"] = True

        ca = CA(root_cert, intermediate_cert)
        chain = ca.pem(intermediate_cert) + ca.pem(root_cert)
        current_chain = _read(paths[CHAIN]).decode(errors="replace") if os.path.exists(paths[CHAIN]) else None
        if current_chain != chain:
            # Derived from the two certificates, so rewriting it is always safe.
            if not check_mode:
                write_atomic(paths[CHAIN], chain.encode(), 0o644)
            result["changed"] = True
        for key_file in (ROOT_KEY, INTERMEDIATE_KEY):
            result["changed"] |= _fix_mode(paths[key_file], 0o600, check_mode)

    wanted = _constraint_names(constraints)
    have = _constraint_names(_cert_constraints(root_cert))
    if wanted != have:
        result["warnings"].append(
            f"the CA's name constraints ({', '.join(sorted(have)) or 'none'}) differ from allowed_domains and "
            f"allowed_networks ({', '.join(sorted(wanted)) or 'none'}); they change only with a new CA")
    renew, reason = lifetime_decision(intermediate_cert, now, DEFAULT_RENEW_FRACTION)
    if renew:
        result["warnings"].append(f"the intermediate CA needs a rollover: {reason}")
    result.update(root_certificate=ca.pem(root_cert), chain=chain, root=cert_info(ca.pem(root_cert)),
                  intermediate=cert_info(ca.pem(intermediate_cert)), intermediate_renew_needed=renew,
                  intermediate_renew_reason=reason)
    return result


def load_ca(ca_dir: str, intermediate_passphrase: str | None = None, with_key: bool = True) -> CA:
    """The CA in `ca_dir`, with the intermediate's key when signing is the point."""
    paths = _paths(ca_dir)
    missing = [name for name in (ROOT_CERT, INTERMEDIATE_CERT) + ((INTERMEDIATE_KEY,) if with_key else ())
               if not os.path.exists(paths[name])]
    if missing:
        raise PKIError(f"no CA in {ca_dir} (missing {', '.join(missing)}): run state=ca first")
    root_cert = _load_cert_file(paths[ROOT_CERT], "root CA")
    intermediate_cert = _load_cert_file(paths[INTERMEDIATE_CERT], "intermediate CA")
    if not is_signed_by(intermediate_cert, root_cert):
        raise PKIError(f"intermediate CA certificate in {paths[INTERMEDIATE_CERT]} was not issued by the root "
                       f"CA in {paths[ROOT_CERT]}")
    key = None
    if with_key:
        key = _load_key_file(paths[INTERMEDIATE_KEY], intermediate_passphrase, "intermediate CA",
                             "intermediate_passphrase")
        if not _same_key(key, intermediate_cert):
            raise PKIError(f"intermediate CA key in {paths[INTERMEDIATE_KEY]} does not belong to "
                           f"{paths[INTERMEDIATE_CERT]}")
    return CA(root_cert, intermediate_cert, key)


# --- signing ----------------------------------------------------------------------------------

def key_problem(public_key) -> str | None:
    """Why a CSR's key is not acceptable, or None."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ACCEPTED_CURVES:
            return f"ECDSA curve {public_key.curve.name} is not accepted (P-256, P-384 or P-521)"
        return None
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            return f"RSA-{public_key.key_size} is too weak (at least RSA-{MIN_RSA_BITS})"
        return None
    return f"{type(public_key).__name__} keys are not accepted (ECDSA P-256/P-384/P-521 or RSA-{MIN_RSA_BITS}+)"


def _load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PKIError(f"csr is not a PEM certificate signing request: {exc}") from None


def sign_csr(ca: CA, csr_pem: str | bytes, sans: list[str], ttl: int, *, max_ttl: int,
             allowed_domains=(), allowed_networks=(), allow_wildcard: bool = False,
             now: datetime.datetime | None = None, check_mode: bool = False) -> dict:
    """Issue a certificate for `csr_pem` naming exactly `sans`, after every policy check."""
    now = now or datetime.datetime.now(UTC)
    if ttl < MIN_TTL:
        raise PKIError(f"ttl {ttl} s is below the minimum of {MIN_TTL} s")
    if ttl > max_ttl:
        raise PKIError(f"ttl {ttl} s is above the CA's maximum of {max_ttl} s (max_ttl): ask for less")

    csr = _load_csr(csr_pem)
    if not csr.is_signature_valid:
        raise PKIError("the CSR's signature does not verify: it was altered after signing, or is corrupt")
    problem = key_problem(csr.public_key())
    if problem:
        raise PKIError(f"the CSR's key is not acceptable: {problem}")

    names = parse_sans(sans)
    wanted = [general_name_str(name) for name in names]
    problems = check_sans_allowed(wanted, list(allowed_domains), allow_ip=bool(allowed_networks),
                                  allowed_networks=list(allowed_networks), allow_wildcard=allow_wildcard)
    if problems:
        raise PKIError("refusing to sign: " + "; ".join(problems))
    requested = set(sans_of(csr))
    if requested != set(wanted):
        extra, missing = sorted(requested - set(wanted)), sorted(set(wanted) - requested)
        detail = "; ".join(part for part in (extra and "it asks also for " + ", ".join(extra),
                                             missing and "it lacks " + ", ".join(missing)) if part)
        raise PKIError(f"the CSR's SANs ({', '.join(sorted(requested)) or 'none'}) differ from sans "
                       f"({', '.join(sorted(wanted))}): {detail}; create the CSR for exactly these names")

    if ca.intermediate_key is None:
        raise PKIError("load_ca(with_key=True) is needed to sign")
    issuer = ca.intermediate_cert
    if now >= not_after(issuer):
        raise PKIError(f"the intermediate CA expired at {iso(not_after(issuer))}: roll it over first")
    if now < not_before(issuer):
        raise PKIError(f"the intermediate CA is valid only from {iso(not_before(issuer))}: check the clock")

    start = max(now - CLOCK_SKEW, not_before(issuer))
    end = now + datetime.timedelta(seconds=ttl)
    clipped = end > not_after(issuer)
    # A certificate outliving its issuer would be rejected by clients from that moment on.
    end = min(end, not_after(issuer))
    result = {"changed": True, "ttl_clipped": clipped, "warnings": []}
    if clipped:
        result["warnings"].append(f"the certificate ends with the intermediate CA at {iso(end)}, "
                                  f"earlier than ttl asks: roll the intermediate over")
    if check_mode:
        return {**result, "certificate": "", "chain": ca.pem(issuer), "ca": ca.pem(ca.root_cert), "info": {}}

    public_key = csr.public_key()
    common_name = wanted[0]
    # A CN holds at most 64 characters; without one the subject is empty and RFC 5280 makes SAN critical.
    subject = (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]) if len(common_name) <= 64
               else x509.Name([]))
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    try:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())  # 159 random bits: unpredictable, never reused
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
            .sign(ca.intermediate_key, _hash_for(ca.intermediate_key)))
    pem = ca.pem(cert)
    return {**result, "certificate": pem, "chain": ca.pem(issuer), "ca": ca.pem(ca.root_cert),
            "info": cert_info(pem)}


# --- the module -------------------------------------------------------------------------------

ARGUMENT_SPEC = {
    "state": {"type": "str", "required": True, "choices": ["ca", "signed"]},
    "ca_dir": {"type": "path", "required": True},
    "ca_name": {"type": "str", "default": "sevenleague"},
    "root_passphrase": {"type": "str", "no_log": True},
    "intermediate_passphrase": {"type": "str", "no_log": True},
    "root_lifetime_days": {"type": "int", "default": 3650},
    "intermediate_lifetime_days": {"type": "int", "default": 365},
    "allowed_domains": {"type": "list", "elements": "str", "default": []},
    "allowed_networks": {"type": "list", "elements": "str", "default": []},
    "allow_wildcard": {"type": "bool", "default": False},
    "csr": {"type": "str"},
    "sans": {"type": "list", "elements": "str"},
    "ttl": {"type": "int", "default": 86400},
    "max_ttl": {"type": "int", "default": 604800},
}
REQUIRED_IF = [("state", "ca", ["root_passphrase", "intermediate_passphrase"]),
               ("state", "signed", ["csr", "sans"])]


def run(params: dict, check_mode: bool) -> dict:
    """Dispatch on state; PKIError carries every message meant for the operator."""
    state = params["state"]
    if state == "ca":
        return ensure_ca(params["ca_dir"], root_passphrase=params["root_passphrase"],
                         intermediate_passphrase=params["intermediate_passphrase"], name=params["ca_name"],
                         allowed_domains=params["allowed_domains"], allowed_networks=params["allowed_networks"],
                         root_days=params["root_lifetime_days"],
                         intermediate_days=params["intermediate_lifetime_days"], check_mode=check_mode)
    ca = load_ca(params["ca_dir"], params["intermediate_passphrase"])
    return sign_csr(ca, params["csr"], params["sans"], params["ttl"], max_ttl=params["max_ttl"],
                    allowed_domains=params["allowed_domains"], allowed_networks=params["allowed_networks"],
                    allow_wildcard=params["allow_wildcard"], check_mode=check_mode)


def main() -> None:
    run_ansible_module(ARGUMENT_SPEC, run, required_if=REQUIRED_IF)


if __name__ == "__main__":
    main()
