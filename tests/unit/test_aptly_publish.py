"""aptly_publish against a real aptly, a real signing key and real .deb files."""

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aptly_publish as mod
import pytest

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True)
def _aptly_installed():
    assert shutil.which("aptly"), "aptly is missing: run make deps"


@pytest.fixture(scope="module")
def gnupghome(tmp_path_factory):
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--passphrase",
            "",
            "--quick-generate-key",
            "test <test@example.invalid>",
            "ed25519",
            "sign",
            "0",
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--with-colons", "--list-secret-keys"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    return home, fpr


@pytest.fixture
def params(tmp_path, gnupghome):
    home, fpr = gnupghome
    config = tmp_path / "aptly.conf"
    config.write_text(
        json.dumps(
            {
                "rootDir": str(tmp_path / "root"),
                "architectures": ["amd64"],
                "gpgProvider": "gpg2",
                "skipContentsPublishing": True,
            }
        )
    )
    return {
        "config": str(config),
        "repo": "sevenleague",
        "distribution": "sevenleague",
        "component": "main",
        "origin": "sevenleague",
        "label": "sevenleague",
        "gpg_key": fpr,
        "gnupghome": str(home),
        "debs": [],
    }


def runner(params):
    def run(args):
        proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, GNUPGHOME=params["gnupghome"]))
        return proc.returncode, proc.stdout, proc.stderr

    return run


def publish(params, *debs, check_mode=False, now=T0):
    return mod.publish(runner(params), dict(params, debs=[str(d) for d in debs]), check_mode, now)


def public(params):
    return Path(json.loads(Path(params["config"]).read_text())["rootDir"]) / "public"


def packages_index(params):
    return (public(params) / "dists" / "sevenleague" / "main" / "binary-amd64" / "Packages").read_text()


@pytest.fixture(scope="module")
def greeter_debs(tmp_path_factory):
    """greeter as built, and the same tree at a second version."""
    out = tmp_path_factory.mktemp("debs")
    subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build.py"), "--out", str(out), "greeter"],
        check=True,
        capture_output=True,
    )
    [first] = out.glob("greeter_*.deb")
    second = with_version(first, "99.0.0-1", out)
    return first, second


def with_version(deb: Path, version: str, out: Path, edit=None) -> Path:
    tree = out / f"tree-{version}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = [
        f"Version: {version}" if line.startswith("Version:") else line for line in control.read_text().splitlines()
    ]
    control.write_text("\n".join(lines) + "\n")
    if edit:
        edit(tree)
    target = out / f"other-{version}" / f"greeter_{version}_all.deb"
    target.parent.mkdir()
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(target)], check=True, capture_output=True
    )
    return target


def deb_version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()


def verify_signature(params):
    subprocess.run(
        [
            "gpg",
            "--homedir",
            params["gnupghome"],
            "--batch",
            "--verify",
            str(public(params) / "dists" / "sevenleague" / "InRelease"),
        ],
        check=True,
        capture_output=True,
    )


def test_no_files_publishes_an_empty_signed_repository(params):
    result = publish(params)
    assert result["changed"] and result["snapshot"] == "sevenleague-20261202T100000Z"
    assert result["previous_snapshot"] == ""
    assert packages_index(params) == ""
    verify_signature(params)
    assert not publish(params)["changed"]


def test_every_published_version_stays_in_the_index(params, greeter_debs):
    first, second = greeter_debs
    one = publish(params, first)
    assert one["changed"] and [p["action"] for p in one["packages"]] == ["added"]
    two = publish(params, second, now=T0 + datetime.timedelta(minutes=5))
    assert two["previous_snapshot"] == one["snapshot"] and two["snapshot"] == "sevenleague-20261202T100500Z"
    index = packages_index(params)
    assert f"Version: {deb_version(first)}\n" in index and "Version: 99.0.0-1\n" in index
    for deb in greeter_debs:
        assert (public(params) / "pool" / "main" / "g" / "greeter" / deb.name).read_bytes() == deb.read_bytes()
    verify_signature(params)


def test_publishing_the_same_file_again_changes_nothing(params, greeter_debs):
    publish(params, greeter_debs[0])
    release = public(params) / "dists" / "sevenleague" / "Release"
    before = release.read_bytes()
    again = publish(params, greeter_debs[0], now=T0 + datetime.timedelta(minutes=1))
    assert not again["changed"] and again["packages"][0]["action"] == "unchanged"
    assert release.read_bytes() == before


def test_a_different_file_with_a_published_version_is_refused_and_nothing_is_added(params, greeter_debs, tmp_path):
    first, second = greeter_debs
    publish(params, first)
    changed = with_version(
        first,
        deb_version(first),
        tmp_path,
        edit=lambda tree: (tree / "usr" / "lib" / "greeter" / "greeter.py").write_text("# changed\n"),
    )
    index = packages_index(params)
    with pytest.raises(mod.PublishError, match="already published from a different file.*raise the version"):
        publish(params, second, changed, now=T0 + datetime.timedelta(minutes=1))
    # The good file of the same batch was not added either: the batch is checked first.
    assert packages_index(params) == index and "99.0.0-1" not in index


def test_a_publication_behind_the_repository_is_brought_up_to_date(params, greeter_debs):
    publish(params, greeter_debs[0])
    # An interrupted run: the file was added, the publication not switched.
    runner(params)(["aptly", f"-config={params['config']}", "repo", "add", "sevenleague", str(greeter_debs[1])])
    assert "99.0.0-1" not in packages_index(params)
    result = publish(params, now=T0 + datetime.timedelta(minutes=1))
    assert result["changed"] and "Version: 99.0.0-1" in packages_index(params)


def test_check_mode_reports_without_adding(params, greeter_debs):
    publish(params)
    result = publish(params, greeter_debs[0], check_mode=True, now=T0 + datetime.timedelta(minutes=1))
    assert result["changed"] and result["packages"][0]["action"] == "added"
    assert packages_index(params) == ""


def test_a_file_that_is_not_a_deb_is_named(params, tmp_path):
    bogus = tmp_path / "bogus.deb"
    bogus.write_text("not a package")
    with pytest.raises(mod.PublishError, match="bogus.deb is not a readable .deb"):
        publish(params, bogus)


def test_a_publication_made_by_hand_is_reported(params):
    run = runner(params)
    aptly = ["aptly", f"-config={params['config']}"]
    run([*aptly, "repo", "create", "-distribution=sevenleague", "sevenleague"])
    rc, _, err = run([*aptly, "publish", "repo", f"-gpg-key={params['gpg_key']}", "sevenleague"])
    assert rc == 0, err
    with pytest.raises(mod.PublishError, match="not a single snapshot.*aptly publish drop sevenleague"):
        publish(params)


def test_another_origin_than_the_published_one_is_reported(params):
    publish(params)
    with pytest.raises(mod.PublishError, match="has Origin 'sevenleague', not 'other'"):
        publish(dict(params, origin="other"))


def test_snapshot_names_never_collide():
    taken = {"r-20261202T100000Z", "r-20261202T100000Z-2"}
    assert mod.snapshot_name("r", taken, T0) == "r-20261202T100000Z-3"


def test_module_documentation_parses():
    import yaml

    for block in (mod.DOCUMENTATION, mod.EXAMPLES, mod.RETURN):
        assert yaml.safe_load(block)
