"""The repository key's fingerprint, computed without GnuPG, is the one GnuPG prints."""

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
