"""The repository key's fingerprint, computed without GnuPG, is the one GnuPG prints."""

import base64
import hashlib
import os
import subprocess

import pytest
from ansible.errors import AnsibleFilterError
from openpgp import openpgp_fingerprint


@pytest.fixture(scope="module")
def gnupg(tmp_path_factory):
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = dict(os.environ, GNUPGHOME=str(home))

    def gpg(*args, **kw):
        return subprocess.run(["gpg", "--batch", *args], env=env, check=True, capture_output=True, text=True, **kw)

    gpg.env = env
    return gpg


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa3072"])
def test_the_fingerprint_is_gnupgs(gnupg, algorithm):
    uid = f"repo-{algorithm}"
    gnupg("--passphrase", "", "--quick-generate-key", uid, algorithm, "sign", "0")
    armored = gnupg("--armor", "--export", uid).stdout
    listed = gnupg("--with-colons", "--show-keys", input=armored).stdout
    expected = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    assert openpgp_fingerprint(armored) == expected


@pytest.mark.parametrize(
    "text", ["", "not a key", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----"]
)
def test_anything_else_is_refused_by_name(text):
    with pytest.raises(AnsibleFilterError, match="openpgp_fingerprint"):
        openpgp_fingerprint(text)


# --- the packet framing, the armour and what is refused ------------------------------------------

PUBLIC_KEY = 6


def armour(data: bytes, header: str = "", blank: bool = True) -> str:
    lines = ["-----BEGIN PGP PUBLIC KEY BLOCK-----", *([header] if header else []), *([""] if blank else [])]
    text = base64.b64encode(data).decode()
    lines += [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([*lines, "-----END PGP PUBLIC KEY BLOCK-----", ""])


@pytest.fixture(scope="module", params=["ed25519", "rsa3072"])
def exported(gnupg, request):
    """(the key's packets as GnuPG exports them, the first packet's body, its fingerprint)."""
    uid = f"framing-{request.param}"
    gnupg("--passphrase", "", "--quick-generate-key", uid, request.param, "sign", "0")
    data = subprocess.run(["gpg", "--batch", "--export", uid], env=gnupg.env, check=True, capture_output=True).stdout
    # GnuPG writes a v4 key as an old-format packet with a one-octet (0x98) or two-octet (0x99) length.
    size = {0x98: 1, 0x99: 2}[data[0]]
    length = int.from_bytes(data[1 : 1 + size], "big")
    body, rest = data[1 + size : 1 + size + length], data[1 + size + length :]
    listed = gnupg("--with-colons", "--show-keys", input=gnupg("--armor", "--export", uid).stdout).stdout
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    return rest, body, fingerprint


def new_format_length(n: int, octets: int) -> bytes:
    if octets == 1:
        return bytes([n])
    if octets == 2:
        return bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    return b"\xff" + n.to_bytes(4, "big")


def test_every_length_encoding_of_the_key_packet_gives_the_same_fingerprint(exported):
    """The fingerprint is the key's, whatever header frames the packet (RFC 4880 4.2)."""
    rest, body, fingerprint = exported
    n = len(body)
    headers = [
        bytes([0x80 | PUBLIC_KEY << 2 | 1]) + n.to_bytes(2, "big"),  # old format, two octets
        bytes([0x80 | PUBLIC_KEY << 2 | 2]) + n.to_bytes(4, "big"),  # old format, four octets
        bytes([0xC0 | PUBLIC_KEY]) + new_format_length(n, 5),  # new format, five octets
        bytes([0xC0 | PUBLIC_KEY]) + new_format_length(n, 1 if n < 192 else 2),  # new format, one or two
    ]
    if n < 256:
        headers.append(bytes([0x80 | PUBLIC_KEY << 2]) + bytes([n]))  # old format, one octet
    for header in headers:
        assert openpgp_fingerprint(armour(header + body + rest)) == fingerprint, header.hex()


def test_the_armour_may_carry_headers_or_leave_out_the_blank_line(exported):
    rest, body, fingerprint = exported
    data = b"\x99" + len(body).to_bytes(2, "big") + body + rest
    assert openpgp_fingerprint(armour(data, header="Comment: the repository key")) == fingerprint
    assert openpgp_fingerprint(armour(data, blank=False)) == fingerprint


def test_a_version_6_key_is_hashed_with_sha256_over_a_four_octet_length(exported):
    """RFC 9580 5.5.4.3: SHA-256 over 0x9B, the body's length in four octets, and the body."""
    _, body, _ = exported
    v6 = bytes([6]) + body[1:]
    expected = hashlib.sha256(b"\x9b" + len(v6).to_bytes(4, "big") + v6).hexdigest().upper()
    assert openpgp_fingerprint(armour(bytes([0xC0 | PUBLIC_KEY]) + new_format_length(len(v6), 5) + v6)) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x05hello", "not an OpenPGP packet"),
        (bytes([0xC0 | PUBLIC_KEY, 0xE0]) + b"\x04" * 8, "a partial-length first packet is not a public key"),
        (bytes([0x80 | PUBLIC_KEY << 2 | 3]) + b"\x04" * 8, "an indeterminate-length first packet is not a public key"),
        (bytes([0xC0 | PUBLIC_KEY, 40]) + b"\x04" * 8, "the packet is truncated"),
        (bytes([0xC0 | 13, 5]) + b"hello", r"the first packet is not a public key \(tag 13\)"),
        (bytes([0xC0 | PUBLIC_KEY, 3]) + b"\x05\x00\x00", "version 5 keys are not supported"),
    ],
)
def test_what_is_not_a_v4_or_v6_public_key_is_refused_with_the_reason(data, message):
    with pytest.raises(AnsibleFilterError, match=f"^openpgp_fingerprint: {message}"):
        openpgp_fingerprint(armour(data))


def test_text_without_an_armoured_key_block_is_named():
    with pytest.raises(AnsibleFilterError, match="^openpgp_fingerprint: no ASCII-armoured public key block$"):
        openpgp_fingerprint("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n")


def test_a_long_key_packet_is_read_to_its_last_octet_in_every_framing():
    """A body of 600 octets needs the second octet of a two-octet length (RFC 4880 4.2.2.2); its v4
    fingerprint is SHA-1 over 0x99, the two-octet length and the body (RFC 4880 12.2)."""
    body = bytes([4]) + bytes(range(256)) * 2 + bytes(87)
    expected = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    for header in (
        bytes([0xC0 | PUBLIC_KEY]) + new_format_length(len(body), 2),
        bytes([0xC0 | PUBLIC_KEY]) + new_format_length(len(body), 5),
        bytes([0x80 | PUBLIC_KEY << 2 | 1]) + len(body).to_bytes(2, "big"),
    ):
        assert openpgp_fingerprint(armour(header + body + b"\xb4\x00")) == expected, header.hex()


def test_a_block_with_a_second_key_or_a_subkey_is_refused(gnupg):
    """apt trusts every key and subkey of the keyring file: one more in the pinned block would sign too."""
    gnupg("--passphrase", "", "--quick-generate-key", "alone", "ed25519", "sign", "0")
    gnupg("--passphrase", "", "--quick-generate-key", "intruder", "ed25519", "sign", "0")
    alone = gnupg("--armor", "--export", "alone").stdout
    openpgp_fingerprint(alone)
    both = gnupg("--armor", "--export", "alone", "intruder").stdout
    with pytest.raises(AnsibleFilterError, match="the block holds 2 keys and subkeys"):
        openpgp_fingerprint(both)
    listed = gnupg("--with-colons", "--list-keys", "alone").stdout
    primary = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    gnupg("--passphrase", "", "--quick-add-key", primary, "ed25519", "sign", "0")
    with pytest.raises(AnsibleFilterError, match="the block holds 2 keys and subkeys"):
        openpgp_fingerprint(gnupg("--armor", "--export", "alone").stdout)
