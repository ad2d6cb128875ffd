"""The fingerprint of an ASCII-armoured OpenPGP public key, computed on the controller.

The apt_client role pins the internal repository's signing key by this
fingerprint: a key that differs from the recorded one stops the run, so a
repository host that lost its GnuPG home (and made a new key) is noticed,
not silently trusted. The block must hold that one key and nothing else that
can sign: apt accepts a signature by any key or subkey of the keyring file, so
a second key or a subkey riding along the pinned one would be trusted too.
Pure Python, so the controller needs no GnuPG for it.
"""

from __future__ import annotations

import base64
import hashlib

from ansible.errors import AnsibleFilterError

_PUBLIC_KEY_TAG = 6
_PUBLIC_SUBKEY_TAG = 14


def _packets(data: bytes):
    """(tag, body) of every packet of a key block, in order."""
    while data:
        tag, body, size = _packet(data)
        yield tag, body
        data = data[size:]


def _first_packet(data: bytes) -> tuple[int, bytes]:
    tag, body, _ = _packet(data)
    return tag, body


def _packet(data: bytes) -> tuple[int, bytes, int]:
    """(tag, body, octets taken) of the first OpenPGP packet (RFC 4880 4.2: old and new formats)."""
    if not data or not data[0] & 0x80:
        raise ValueError("not an OpenPGP packet")
    header = data[0]
    if header & 0x40:  # new format
        tag, first = header & 0x3F, data[1]
        if first < 192:
            length, start = first, 2
        elif first < 224:
            length, start = ((first - 192) << 8) + data[2] + 192, 3
        elif first == 255:
            length, start = int.from_bytes(data[2:6], "big"), 6
        else:
            raise ValueError("a partial-length first packet is not a public key")
    else:  # old format
        tag, kind = (header >> 2) & 0x0F, header & 0x03
        if kind == 3:
            raise ValueError("an indeterminate-length first packet is not a public key")
        size = 1 << kind
        length, start = int.from_bytes(data[1 : 1 + size], "big"), 1 + size
    body = data[start : start + length]
    if len(body) != length:
        raise ValueError("the packet is truncated")
    return tag, body, start + length


def dearmor(armored: str) -> bytes:
    lines = [line.strip() for line in str(armored).strip().splitlines()]
    try:
        begin = lines.index("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        end = lines.index("-----END PGP PUBLIC KEY BLOCK-----")
    except ValueError:
        raise ValueError("no ASCII-armoured public key block") from None
    body = lines[begin + 1 : end]
    # Armor headers end at the first empty line; the CRC line starts with "=".
    if "" in body:
        body = body[body.index("") + 1 :]
    return base64.b64decode("".join(line for line in body if line and not line.startswith("=")))


def openpgp_fingerprint(armored: str) -> str:
    """Upper-case hex fingerprint of the primary key, as `gpg --with-colons` prints it (v4 and v6)."""
    try:
        data = dearmor(armored)
        tag, body = _first_packet(data)
        if tag != _PUBLIC_KEY_TAG or not body:
            raise ValueError(f"the first packet is not a public key (tag {tag})")
        keys = sum(1 for tag, _ in _packets(data) if tag in (_PUBLIC_KEY_TAG, _PUBLIC_SUBKEY_TAG))
    except (ValueError, IndexError, base64.binascii.Error) as exc:
        raise AnsibleFilterError(f"openpgp_fingerprint: {exc}") from None
    if keys != 1:
        raise AnsibleFilterError(
            f"openpgp_fingerprint: the block holds {keys} keys and subkeys; the repository's key must be"
            " alone in it, with no subkey"
        )
    version = body[0]
    if version == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if version == 6:
        return hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise AnsibleFilterError(f"openpgp_fingerprint: version {version} keys are not supported")


class FilterModule:
    def filters(self):
        return {"openpgp_fingerprint": openpgp_fingerprint}
