"""The built-in CA's keys at rest: PKCS#8 EncryptedPrivateKeyInfo (RFC 5958) with PBES2 (RFC 8018).

The few lines of DER that cryptography's BestAvailableEncryption cannot be told to write.
"""

from __future__ import annotations

import base64
import os

from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import read_or_none

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
except ImportError:  # pki.HAS_CRYPTOGRAPHY says so; the module reports it
    pass

from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import replace_file
from ansible_collections.sevenleague.platform.plugins.module_utils.pki import PKIError

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


def der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) pairs of the DER elements in `data`, one level deep."""
    items, pos = [], 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        if pos + length > len(data):
            raise ValueError("truncated DER")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def pem_body(data: bytes, label: str) -> bytes:
    text = data.decode("ascii")
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if begin not in text or end not in text:
        raise ValueError(f"no {label} PEM block")
    return base64.b64decode("".join(text.split(begin, 1)[1].split(end, 1)[0].split()), validate=True)


def key_pem(key, passphrase: str) -> bytes:
    """`key` as PKCS#8 PEM, encrypted with PBES2: PBKDF2-HMAC-SHA256 (KDF_ITERATIONS) and AES-256-CBC."""
    if not passphrase:
        raise PKIError("a CA key is never written unencrypted: its passphrase is empty")
    salt, iv = os.urandom(KDF_SALT_BYTES), os.urandom(_AES_BLOCK_BYTES)
    secret = PBKDF2HMAC(hashes.SHA256(), 32, salt, KDF_ITERATIONS).derive(passphrase.encode())
    padder = padding.PKCS7(8 * _AES_BLOCK_BYTES).padder()
    plain = (
        padder.update(
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        + padder.finalize()
    )
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(plain) + encryptor.finalize()
    kdf = _der(
        0x30,
        _der_oid(_OID_PBKDF2)
        + _der(
            0x30, _der(0x04, salt) + _der_int(KDF_ITERATIONS) + _der(0x30, _der_oid(_OID_HMAC_SHA256) + b"\x05\x00")
        ),
    )
    scheme = _der(0x30, _der_oid(_OID_AES256_CBC) + _der(0x04, iv))
    algorithm = _der(0x30, _der_oid(_OID_PBES2) + _der(0x30, kdf + scheme))
    body = base64.b64encode(_der(0x30, algorithm + _der(0x04, sealed))).decode()
    lines = [body[start : start + 64] for start in range(0, len(body), 64)]
    return "\n".join(
        [f"-----BEGIN {_PEM_ENCRYPTED_KEY}-----", *lines, f"-----END {_PEM_ENCRYPTED_KEY}-----", ""]
    ).encode()


def kdf_is_current(data: bytes) -> bool:
    """Whether the PEM key `data` is encrypted at least as strongly as key_pem encrypts.

    PBES2 with PBKDF2 (a SHA-2 PRF, at least KDF_ITERATIONS, a salt of at least 8 bytes)
    and AES-256-CBC. Anything else (unencrypted, 2048 iterations, legacy PEM encryption) is not.
    """
    try:
        ((_, info),) = der_items(pem_body(data, _PEM_ENCRYPTED_KEY))
        algorithm, _ = der_items(info)
        pbes2, params = der_items(algorithm[1])
        kdf, scheme = der_items(params[1])
        kdf_oid, kdf_params = der_items(kdf[1])
        salt, iterations, *optional = der_items(kdf_params[1])
        scheme_oid = der_items(scheme[1])[0]
        # The PRF is last; absent, it is HMAC-SHA1.
        prf_oid = der_items(optional[-1][1])[0] if optional and optional[-1][0] == 0x30 else None
    except (ValueError, IndexError, UnicodeDecodeError):
        return False
    return (
        _der(*pbes2) == _der_oid(_OID_PBES2)
        and _der(*kdf_oid) == _der_oid(_OID_PBKDF2)
        and _der(*scheme_oid) == _der_oid(_OID_AES256_CBC)
        and salt[0] == 0x04
        and len(salt[1]) >= _MIN_SALT_BYTES
        and iterations[0] == 0x02
        and int.from_bytes(iterations[1], "big") >= KDF_ITERATIONS
        and prf_oid is not None
        and any(_der(*prf_oid) == _der_oid(oid) for oid in _STRONG_PRFS)
    )


def rekey(path: str, key, passphrase: str) -> None:
    """Re-encrypt the key in `path` with key_pem; the file switches only once the new one proves right."""
    der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    expected = key.private_bytes(*der)

    def verify(tmp: str) -> None:
        written = read_or_none(tmp)
        try:
            again = serialization.load_pem_private_key(written, password=passphrase.encode())
        except (ValueError, TypeError):
            again = None
        if again is None or again.private_bytes(*der) != expected or not kdf_is_current(written):
            raise PKIError(
                f"re-encrypting {path} failed: the new file did not decrypt to the same key; the old file is unchanged"
            )

    replace_file(path, key_pem(key, passphrase), 0o600, verify=verify)


def same_key(private_key, cert: x509.Certificate) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return private_key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
