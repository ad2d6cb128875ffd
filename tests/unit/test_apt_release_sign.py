"""apt_release_sign and apt_served_dists with a real GnuPG, real files and gpgv as apt runs it."""

import datetime
import hashlib
import os
import subprocess

import apt_release_sign as sign
import apt_served_dists as served
import pytest
from ansible_module import assert_documented, run_module

T0 = datetime.datetime(2026, 12, 7, 9, 30, 5, tzinfo=datetime.UTC)
TEN_DAYS = datetime.timedelta(days=10)
PACKAGES = b"Package: greeter\nVersion: 1.0.0-1\n\n"


def release_for(packages: bytes) -> str:
    """A Release file as aptly writes it, listing one Packages file."""
    digest = hashlib.sha256(packages).hexdigest()
    return (
        "Origin: sevenleague\nLabel: sevenleague\nSuite: sevenleague\nCodename: sevenleague\n"
        "Date: Mon, 7 Dec 2026 09:00:00 UTC\nArchitectures: amd64\nComponents: main\nDescription: x\n"
        f"MD5Sum:\n {hashlib.md5(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
        f"SHA256:\n {digest} {len(packages)} main/binary-amd64/Packages\n"
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("signing") / "home")


def params(home, **extra):
    base = {
        "gnupghome": home,
        "passphrase": "correct horse",
        "key_uid": "test <test@example.invalid>",
        "key_algorithm": "ed25519",
        "key_expire": "0",
        "release": None,
        "served": "",
        "valid_for_days": 10,
        "resign_below": 0.75,
        "now": None,
    }
    return {**base, **extra}


def test_date_and_valid_until_replace_aptly_s_date_and_keep_every_other_line():
    text = sign.rewrite(release_for(PACKAGES), T0, TEN_DAYS)
    assert "Date: Mon, 07 Dec 2026 09:30:05 UTC\nValid-Until: Thu, 17 Dec 2026 09:30:05 UTC\n" in text
    assert text.count("Date:") == 1 and text.count("Valid-Until:") == 1
    assert sign.without_times(text) == sign.without_times(release_for(PACKAGES))
    # Signing again replaces both, and a Release without Date gets them before the checksums.
    again = sign.rewrite(text, T0 + TEN_DAYS, TEN_DAYS)
    assert again.count("Valid-Until:") == 1 and "Valid-Until: Sun, 27 Dec 2026" in again
    bare = sign.rewrite("Suite: s\nSHA256:\n 00 1 a\n", T0, TEN_DAYS)
    assert bare.index("Valid-Until:") < bare.index("SHA256:")


def test_dates_are_english_whatever_the_locale_and_read_back():
    assert sign.release_date(T0) == "Mon, 07 Dec 2026 09:30:05 UTC"
    assert sign.parse_date(sign.release_date(T0)) == T0
    with pytest.raises(ValueError):
        sign.parse_date("2026-12-07")


@pytest.mark.parametrize(
    ("served_body", "age", "why"),
    [
        (None, 0, "no InRelease signed by this key"),
        ("other", 0, "lists other files"),
        ("same", datetime.timedelta(days=3), "less than 75%"),
        ("same", datetime.timedelta(days=2), ""),
        ("no-valid-until", 0, "no Valid-Until"),
    ],
)
def test_it_signs_again_only_when_the_files_changed_or_a_quarter_of_the_validity_passed(served_body, age, why):
    release = release_for(PACKAGES)
    body = {
        None: None,
        "other": sign.rewrite(release_for(b"other\n"), T0, TEN_DAYS),
        "same": sign.rewrite(release, T0, TEN_DAYS),
        "no-valid-until": release,
    }[served_body]
    reason = sign.decide(release, body, T0 + (age or datetime.timedelta(0)), TEN_DAYS, 0.75)
    assert (why in reason) if why else reason == ""


def test_the_key_is_made_once_under_its_passphrase_and_signs_what_gpgv_accepts(home, tmp_path):
    first = sign.run(params(home))
    assert first["changed"] and len(first["fingerprint"]) == 40
    assert os.stat(home).st_mode & 0o777 == 0o700
    assert sign.run(params(home)) == {**first, "changed": False}
    # The secret key is encrypted: a wrong passphrase exports nothing.
    wrong = subprocess.run(
        [
            *("gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", "wrong"),
            "--export-secret-keys",
            first["fingerprint"],
        ],
        capture_output=True,
    )
    assert wrong.returncode != 0 or wrong.stdout == b""
    signed = sign.run(params(home, release=release_for(PACKAGES)), now=T0)
    assert signed["signed"] and "Valid-Until: Thu, 17 Dec 2026 09:30:05 UTC" in signed["release"]
    keyring = tmp_path / "key.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--homedir", home, "--export"], capture_output=True).stdout)
    (tmp_path / "InRelease").write_text(signed["inrelease"])
    (tmp_path / "Release").write_text(signed["release"])
    (tmp_path / "Release.gpg").write_text(signed["release_gpg"])
    for args in (["InRelease"], ["Release.gpg", "Release"]):
        check = subprocess.run(["gpgv", "--keyring", str(keyring), *args], cwd=tmp_path, capture_output=True)
        assert check.returncode == 0, check.stderr
    # What is served and still fresh is kept; a signature by another key is not.
    kept = sign.run(params(home, release=release_for(PACKAGES), served=signed["inrelease"]), now=T0)
    assert not kept["changed"] and kept["inrelease"] == signed["inrelease"]
    forged = signed["inrelease"].replace("Label: sevenleague", "Label: evil")
    assert sign.run(params(home, release=release_for(PACKAGES), served=forged), now=T0)["signed"]


def test_a_wrong_passphrase_signs_nothing(home):
    sign.run(params(home))
    with pytest.raises(sign.SignError):
        sign.run(params(home, passphrase="wrong", release=release_for(PACKAGES)), now=T0)


def test_a_home_with_a_second_secret_key_is_refused(tmp_path):
    home = str(tmp_path / "home")
    sign.run(params(home))
    subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-generate-key", "second", "ed25519"],
        capture_output=True,
        check=True,
    )
    with pytest.raises(sign.SignError, match="holds 2 secret keys"):
        sign.run(params(home))


def test_the_passphrase_stays_out_of_the_output_and_a_past_time_gives_an_expired_release(home, tmp_path):
    sign.run(params(home))
    args = {
        "gnupghome": home,
        "passphrase": "correct horse",
        "release": release_for(PACKAGES),
        "now": "2026-01-01T00:00:00",
    }
    result, output = run_module("apt_release_sign", args, tmp_path)
    assert result["signed"] and "Valid-Until: Sun, 11 Jan 2026 00:00:00 UTC" in result["inrelease"]
    assert "correct horse" not in output


def dists(tmp_path, packages=PACKAGES):
    source = tmp_path / "public" / "dists" / "sevenleague"
    (source / "main" / "binary-amd64").mkdir(parents=True)
    (source / "main" / "binary-amd64" / "Packages").write_bytes(packages)
    (tmp_path / "served").mkdir()
    (tmp_path / "signed").mkdir()
    return {
        "source": str(source),
        "link": str(tmp_path / "served" / "sevenleague"),
        "store": str(tmp_path / "signed"),
    }


def test_the_served_indexes_switch_by_one_rename_to_a_complete_signed_copy(home, tmp_path):
    paths = dists(tmp_path)
    one = sign.run(params(home, release=release_for(PACKAGES)), now=T0)
    first = served.serve({**paths, **{k: one[k] for k in ("release", "inrelease", "release_gpg")}})
    link = tmp_path / "served" / "sevenleague"
    assert first["changed"] and link.is_symlink()
    assert (link / "InRelease").read_text() == one["inrelease"]
    assert (link / "main" / "binary-amd64" / "Packages").read_bytes() == PACKAGES
    again = served.serve({**paths, **{k: one[k] for k in ("release", "inrelease", "release_gpg")}})
    assert not again["changed"]
    # aptly publishes again: the new copy is served, the one before stays for clients halfway through.
    newer = PACKAGES + b"Package: greeter\nVersion: 1.1.0-1\n\n"
    (tmp_path / "public" / "dists" / "sevenleague" / "main" / "binary-amd64" / "Packages").write_bytes(newer)
    two = sign.run(params(home, release=release_for(newer), served=one["inrelease"]), now=T0)
    second = served.serve({**paths, **{k: two[k] for k in ("release", "inrelease", "release_gpg")}})
    assert second["previous"] == first["path"] and os.path.isdir(first["path"])
    assert (link / "main" / "binary-amd64" / "Packages").read_bytes() == newer
    three = sign.run(params(home, release=release_for(newer), served=two["inrelease"]), now=T0 + TEN_DAYS)
    served.serve({**paths, **{k: three[k] for k in ("release", "inrelease", "release_gpg")}})
    assert sorted(os.listdir(tmp_path / "signed")) == sorted(
        os.path.basename(p) for p in (os.path.realpath(link), second["path"])
    )


def test_indexes_that_are_not_the_signed_ones_are_never_served(home, tmp_path):
    paths = dists(tmp_path, packages=b"changed since the controller read the Release\n")
    one = sign.run(params(home, release=release_for(PACKAGES)), now=T0)
    with pytest.raises(served.ServeError, match="another publish ran in between"):
        served.serve({**paths, **{k: one[k] for k in ("release", "inrelease", "release_gpg")}})
    assert not os.path.lexists(paths["link"])


def test_modules_are_documented():
    assert_documented(sign)
    assert_documented(served)
