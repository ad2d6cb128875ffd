"""The built-in CA's store on the controller: a root and an intermediate, created once, checked on every load.

The folder holds root.key, root.crt, intermediate.key, intermediate.crt and chain.pem; the keys are
encrypted at rest (ca_keyfile), every write is atomic (fileio), and a lock file serialises runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import ipaddress
import os

from ansible_collections.sevenleague.platform.plugins.module_utils.ca_keyfile import (
    kdf_is_current,
    key_pem,
    rekey,
    same_key,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:  # pki.HAS_CRYPTOGRAPHY says so; the module reports it
    pass

from ansible_collections.sevenleague.platform.plugins.module_utils.fileio import replace_file
from ansible_collections.sevenleague.platform.plugins.module_utils.pki import (
    CLOCK_SKEW_TOLERANCE,
    DEFAULT_RENEW_FRACTION,
    PKIError,
    cert_info,
    general_name_str,
    is_signed_by,
    iso,
    lifetime_decision,
    not_after,
)

UTC = datetime.UTC
ROOT_CERT = "root.crt"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.crt"
INTERMEDIATE_KEY = "intermediate.key"
CHAIN = "chain.pem"
CA_FILES = (ROOT_KEY, ROOT_CERT, INTERMEDIATE_KEY, INTERMEDIATE_CERT)  # the order they are written in
LOCK = ".lock"
# Hosts whose clocks run a little behind still accept a certificate issued this minute.
CLOCK_SKEW = CLOCK_SKEW_TOLERANCE


@dataclasses.dataclass
class CA:
    root_cert: x509.Certificate
    intermediate_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey | None = None

    def pem(self, cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()


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
    return {general_name_str(name) for name in constraints.permitted_subtrees or []} | {
        f"not {general_name_str(name)}" for name in constraints.excluded_subtrees or []
    }


def _cert_constraints(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _ca_cert(subject, issuer, public_key, signing_key, start, end, path_length, constraints, issuer_ski):
    ca_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski or ski), critical=False
        )
    )
    if constraints is not None:
        # RFC 5280: name constraints MUST be critical, so a client that cannot check them refuses the chain.
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(signing_key, hash_for(signing_key))


def hash_for(key):
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _create_ca(
    paths, name, root_passphrase, intermediate_passphrase, constraints, root_days, intermediate_days, now
) -> None:
    start = now - CLOCK_SKEW
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA"),
        ]
    )
    root_end = now + datetime.timedelta(days=root_days)
    # pathlen 1: the root signs intermediates, the intermediates sign only end entities.
    root = _ca_cert(root_name, root_name, root_key.public_key(), root_key, start, root_end, 1, constraints, None)

    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Intermediate CA"),
        ]
    )
    intermediate_end = min(now + datetime.timedelta(days=intermediate_days), root_end)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    intermediate = _ca_cert(
        intermediate_name,
        root_name,
        intermediate_key.public_key(),
        root_key,
        start,
        intermediate_end,
        0,
        constraints,
        root_ski,
    )

    pem = serialization.Encoding.PEM
    # Keys first: a crash leaves a partial CA, which ensure_ca refuses to complete rather than overwrite.
    replace_file(paths[ROOT_KEY], key_pem(root_key, root_passphrase), 0o600)
    replace_file(paths[ROOT_CERT], root.public_bytes(pem), 0o644)
    replace_file(paths[INTERMEDIATE_KEY], key_pem(intermediate_key, intermediate_passphrase), 0o600)
    replace_file(paths[INTERMEDIATE_CERT], intermediate.public_bytes(pem), 0o644)


def _validate(paths, root_cert, intermediate_cert, now) -> None:
    if not is_signed_by(root_cert, root_cert):
        raise PKIError(f"root CA certificate in {paths[ROOT_CERT]} is not self-signed")
    if now >= not_after(root_cert):
        raise PKIError(f"root CA in {paths[ROOT_CERT]} expired at {iso(not_after(root_cert))}: a new CA is needed")
    if not is_signed_by(intermediate_cert, root_cert):
        raise PKIError(
            f"intermediate CA certificate in {paths[INTERMEDIATE_CERT]} was not issued by the root "
            f"CA in {paths[ROOT_CERT]}"
        )


def _paths(ca_dir: str) -> dict[str, str]:
    return {name: os.path.join(ca_dir, name) for name in (*CA_FILES, CHAIN)}


def ensure_ca(
    ca_dir: str,
    *,
    root_passphrase: str,
    intermediate_passphrase: str,
    name: str = "sevenleague",
    allowed_domains=(),
    allowed_networks=(),
    root_days: int = 3650,
    intermediate_days: int = 365,
    now: datetime.datetime | None = None,
    check_mode: bool = False,
) -> dict:
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
            return {
                **result,
                "changed": True,
                "created": True,
                "intermediate_renew_needed": False,
                "intermediate_renew_reason": "the CA would be created",
            }
        os.makedirs(ca_dir, mode=0o700)
        result["changed"] = True
    result["changed"] |= _fix_mode(ca_dir, 0o700, check_mode)

    with contextlib.nullcontext() if check_mode else _locked(ca_dir):
        present = [filename for filename in CA_FILES if os.path.exists(paths[filename])]
        if not present:
            if check_mode:
                return {
                    **result,
                    "changed": True,
                    "created": True,
                    "intermediate_renew_needed": False,
                    "intermediate_renew_reason": "the CA would be created",
                }
            _create_ca(
                paths, name, root_passphrase, intermediate_passphrase, constraints, root_days, intermediate_days, now
            )
            result.update(changed=True, created=True)
        elif len(present) < len(CA_FILES):
            missing = [filename for filename in CA_FILES if filename not in present]
            raise PKIError(
                f"{ca_dir} holds a partial CA ({', '.join(present)}) without {', '.join(missing)}; "
                f"it is never completed automatically: restore the missing files from a backup, "
                f"or move the directory away to create a new CA"
            )

        root_cert = _load_cert_file(paths[ROOT_CERT], "root CA")
        intermediate_cert = _load_cert_file(paths[INTERMEDIATE_CERT], "intermediate CA")
        # Decrypting both keys proves the passphrases and that the files on disk belong together.
        # An unencrypted key (the intermediate's, before it had a passphrase) is encrypted below.
        root_key = _load_key_file(paths[ROOT_KEY], root_passphrase, "root CA", "root_passphrase", plain_ok=True)
        intermediate_key = _load_key_file(
            paths[INTERMEDIATE_KEY],
            intermediate_passphrase,
            "intermediate CA",
            "intermediate_passphrase",
            plain_ok=True,
        )
        if not same_key(root_key, root_cert):
            raise PKIError(f"root CA key in {paths[ROOT_KEY]} does not belong to {paths[ROOT_CERT]}")
        if not same_key(intermediate_key, intermediate_cert):
            raise PKIError(
                f"intermediate CA key in {paths[INTERMEDIATE_KEY]} does not belong to {paths[INTERMEDIATE_CERT]}"
            )
        _validate(paths, root_cert, intermediate_cert, now)

        for key_file, key, passphrase in (
            (ROOT_KEY, root_key, root_passphrase),
            (INTERMEDIATE_KEY, intermediate_key, intermediate_passphrase),
        ):
            if not kdf_is_current(_read(paths[key_file])):
                if not check_mode:
                    rekey(paths[key_file], key, passphrase)
                result["rekeyed"].append(key_file)
                result["changed"] = True

        ca = CA(root_cert, intermediate_cert)
        chain = ca.pem(intermediate_cert) + ca.pem(root_cert)
        current_chain = _read(paths[CHAIN]).decode(errors="replace") if os.path.exists(paths[CHAIN]) else None
        if current_chain != chain:
            # Derived from the two certificates, so rewriting it is always safe.
            if not check_mode:
                replace_file(paths[CHAIN], chain.encode(), 0o644)
            result["changed"] = True
        for key_file in (ROOT_KEY, INTERMEDIATE_KEY):
            result["changed"] |= _fix_mode(paths[key_file], 0o600, check_mode)

    wanted = _constraint_names(constraints)
    have = _constraint_names(_cert_constraints(root_cert))
    if wanted != have:
        result["warnings"].append(
            f"the CA's name constraints ({', '.join(sorted(have)) or 'none'}) differ from allowed_domains and "
            f"allowed_networks ({', '.join(sorted(wanted)) or 'none'}); they change only with a new CA"
        )
    renew, reason = lifetime_decision(intermediate_cert, now, DEFAULT_RENEW_FRACTION)
    if renew:
        result["warnings"].append(f"the intermediate CA needs a rollover: {reason}")
    result.update(
        root_certificate=ca.pem(root_cert),
        chain=chain,
        root=cert_info(ca.pem(root_cert)),
        intermediate=cert_info(ca.pem(intermediate_cert)),
        intermediate_renew_needed=renew,
        intermediate_renew_reason=reason,
    )
    return result


def load_ca(ca_dir: str, intermediate_passphrase: str | None = None, with_key: bool = True) -> CA:
    """The CA in `ca_dir`, with the intermediate's key when signing is the point."""
    paths = _paths(ca_dir)
    missing = [
        name
        for name in (ROOT_CERT, INTERMEDIATE_CERT) + ((INTERMEDIATE_KEY,) if with_key else ())
        if not os.path.exists(paths[name])
    ]
    if missing:
        raise PKIError(f"no CA in {ca_dir} (missing {', '.join(missing)}): run state=ca first")
    root_cert = _load_cert_file(paths[ROOT_CERT], "root CA")
    intermediate_cert = _load_cert_file(paths[INTERMEDIATE_CERT], "intermediate CA")
    if not is_signed_by(intermediate_cert, root_cert):
        raise PKIError(
            f"intermediate CA certificate in {paths[INTERMEDIATE_CERT]} was not issued by the root "
            f"CA in {paths[ROOT_CERT]}"
        )
    key = None
    if with_key:
        key = _load_key_file(
            paths[INTERMEDIATE_KEY], intermediate_passphrase, "intermediate CA", "intermediate_passphrase"
        )
        if not same_key(key, intermediate_cert):
            raise PKIError(
                f"intermediate CA key in {paths[INTERMEDIATE_KEY]} does not belong to {paths[INTERMEDIATE_CERT]}"
            )
    return CA(root_cert, intermediate_cert, key)
