"""reprepro_include against a real reprepro repository and real .deb files."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import reprepro_include as mod

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _reprepro_installed():
    assert shutil.which("reprepro"), "reprepro is missing: run make deps"


def run(args):
    proc = subprocess.run(args, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def repo(tmp_path):
    conf = tmp_path / "repo" / "conf"
    conf.mkdir(parents=True)
    (conf / "distributions").write_text(
        "Codename: bookworm\nArchitectures: amd64\nComponents: main\nOrigin: test\nLabel: test\n")
    return tmp_path / "repo"


@pytest.fixture(scope="module")
def greeter_deb(tmp_path_factory):
    out = tmp_path_factory.mktemp("debs")
    subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--out", str(out), "greeter"],
                   check=True, capture_output=True)
    [deb] = out.glob("greeter_*.deb")
    return deb


def rebuilt_with_other_content(deb: Path, tmp_path: Path) -> Path:
    """The same name and version, different bytes: what a careless rebuild produces."""
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    (tree / "usr" / "lib" / "greeter" / "greeter.py").write_text("# changed\n")
    other = tmp_path / "other" / deb.name
    other.parent.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(other)], check=True,
                   capture_output=True)
    return other


def test_first_publish_includes_the_package(repo, greeter_deb):
    result = mod.publish(run, str(repo), "bookworm", "main", str(greeter_deb))
    assert result["changed"] and result["action"] == "included"
    assert result["package"] == "greeter" and result["architecture"] == "all"
    packages = (repo / "dists" / "bookworm" / "main" / "binary-amd64" / "Packages").read_text()
    assert "Package: greeter" in packages and f"Version: {result['version']}" in packages


def test_publishing_the_same_file_again_changes_nothing(repo, greeter_deb):
    mod.publish(run, str(repo), "bookworm", "main", str(greeter_deb))
    before = (repo / "dists" / "bookworm" / "Release").read_bytes()
    again = mod.publish(run, str(repo), "bookworm", "main", str(greeter_deb))
    assert not again["changed"] and again["action"] == "unchanged"
    assert (repo / "dists" / "bookworm" / "Release").read_bytes() == before


def test_a_different_file_with_a_published_version_is_refused(repo, greeter_deb, tmp_path):
    mod.publish(run, str(repo), "bookworm", "main", str(greeter_deb))
    other = rebuilt_with_other_content(greeter_deb, tmp_path)
    with pytest.raises(mod.PublishError, match="already published from a different file.*raise the version"):
        mod.publish(run, str(repo), "bookworm", "main", str(other))


def test_an_older_version_than_the_published_one_is_refused(repo, greeter_deb, tmp_path):
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(greeter_deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    published = re.search(r"^Version: (\S+)$", control.read_text(), re.M)[1]
    control.write_text(control.read_text().replace(f"Version: {published}", "Version: 9.0.0-1"))
    newer = tmp_path / "greeter_9.0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(newer)], check=True,
                   capture_output=True)
    mod.publish(run, str(repo), "bookworm", "main", str(newer))
    with pytest.raises(mod.PublishError, match=f"did not publish greeter {re.escape(published)}: bookworm has 9.0.0-1"):
        mod.publish(run, str(repo), "bookworm", "main", str(greeter_deb))


def test_check_mode_reports_without_including(repo, greeter_deb):
    result = mod.publish(run, str(repo), "bookworm", "main", str(greeter_deb), check_mode=True)
    assert result["changed"]
    assert not (repo / "pool").exists()


def test_a_file_that_is_not_a_deb_is_named(repo, tmp_path):
    bogus = tmp_path / "bogus.deb"
    bogus.write_text("not a package")
    with pytest.raises(mod.PublishError, match="not a readable .deb"):
        mod.publish(run, str(repo), "bookworm", "main", str(bogus))


def test_an_unknown_codename_is_reported(repo, greeter_deb):
    with pytest.raises(mod.PublishError, match="distribution 'trixie'"):
        mod.publish(run, str(repo), "trixie", "main", str(greeter_deb))


@pytest.mark.parametrize(("package", "expected"), [("greeter", "pool/main/g/greeter/x.deb"),
                                                   ("libfoo", "pool/main/libf/libfoo/x.deb")])
def test_pool_path_follows_reprepro_layout(package, expected):
    assert mod.pool_path("/srv/apt", "main", "x.deb", package) == f"/srv/apt/{expected}"


def test_module_documentation_parses():
    import yaml
    for block in (mod.DOCUMENTATION, mod.EXAMPLES, mod.RETURN):
        assert yaml.safe_load(block)
