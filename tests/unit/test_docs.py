"""Every repository path and every `make` target the docs name exists.

README.md and docs/ name files (in code spans, code blocks and markdown links)
and commands (`make <target>`).  A renamed file or target makes this fail, so
the docs cannot drift from the tree.  What is checked:

- markdown links `[text](target)`, relative to the doc's folder (as a reader
  clicking them sees them), and their `#anchor` against the target's headings;
- words in inline code and code blocks that look like a repository path
  (contain a `/`, or end in a known extension), relative to the repository
  root (or to the doc's folder when they start with `./` or `../`);
- `make <target>` in inline code and code blocks, against the Makefile.

Not checked, since they are not files of the repository: URLs, globs (`*`),
placeholders (`<role>`, `$VAR`, `{{ }}`), options and assignments (`=`),
paths on hosts (`/etc/...`, `~/...`), addresses and networks (no letter),
and paths that .gitignore ignores (what runs create: `.venv/`, `.lab/`,
`build/`, ...).  Mermaid diagrams and comments in code blocks are not read.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

# A bare word with one of these endings is taken for a file at the root.
EXTENSIONS = (".md", ".yml", ".yaml", ".py", ".cfg", ".toml", ".txt", ".json", ".j2", ".ini")

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_MAKE = re.compile(r"(?:^|[\s;&|(])make\s+(?:-\S+\s+)*([A-Za-z][\w.-]*)(?!\S*=)")
_TARGET = re.compile(r"^([A-Za-z0-9][\w.-]*(?:[ \t]+[A-Za-z0-9][\w.-]*)*)[ \t]*:(?!=)")
_PATHLIKE = re.compile(r"^[\w.@+-]+(?:/[\w.@+-]*)*$")
# Characters that mark a placeholder, a glob, a URL or an option rather than a path.
_NOT_A_PATH = set("*?<>{}$=:[]|&;!%")


def makefile_targets(makefile: Path) -> set[str]:
    """The targets a Makefile defines: rule heads and .PHONY names (variables aside)."""
    targets: set[str] = set()
    for line in makefile.read_text().splitlines():
        if line.startswith((".PHONY:", ".PHONY :")):
            targets.update(line.split(":", 1)[1].split())
            continue
        match = _TARGET.match(line)
        if match:
            targets.update(name for name in match.group(1).split() if not name.startswith("."))
    return targets


def gitignore_patterns(root: Path) -> list[str]:
    path = root / ".gitignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "!"))]


def is_ignored(relpath: str, patterns: list[str]) -> bool:
    """Whether .gitignore ignores the path or one of its parent folders (the common pattern forms)."""
    parts = [part for part in relpath.split("/") if part not in ("", ".")]
    for pattern in patterns:
        anchored = "/" in pattern.rstrip("/")
        body = pattern.strip("/")
        for depth in range(1, len(parts) + 1):
            if anchored and fnmatch.fnmatchcase("/".join(parts[:depth]), body):
                return True
            if not anchored and fnmatch.fnmatchcase(parts[depth - 1], body):
                return True
    return False


def markdown_lines(text: str) -> Iterator[tuple[str, str | None]]:
    """Each line with the language of the code block it is in (None for prose); fence lines as empty prose."""
    fence: str | None = None
    language: str | None = None
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence, language = opening.group(1), opening.group(2).lower()
            yield "", None
        elif fence is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = language = None
            yield "", None
        else:
            yield line, language


def code_and_links(text: str) -> tuple[list[str], list[str]]:
    """The code of a markdown text (inline spans and block lines, comments cut) and its link targets."""
    code: list[str] = []
    prose: list[str] = []
    for line, language in markdown_lines(text):
        if language is None:
            prose.append(line)
        elif language != "mermaid":
            code.append(re.split(r"(?:^|\s)#", line, maxsplit=1)[0])
    # Paragraph by paragraph: a code span or a link may wrap onto the next line.
    links: list[str] = []
    for paragraph in re.split(r"\n\s*\n", "\n".join(prose)):
        code.extend(match.group(2).strip() for match in _INLINE_CODE.finditer(paragraph))
        links.extend(match.group(1) for match in _LINK.finditer(_INLINE_CODE.sub(" ", paragraph)))
    return code, links


def anchors(text: str) -> set[str]:
    """The link anchors of a markdown text's headings, as GitHub makes them (repeats get -1, -2, ...)."""
    found: set[str] = set()
    for line, language in markdown_lines(text):
        heading = _HEADING.match(line) if language is None else None
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            found.update([slug, *(f"{slug}-{n}" for n in range(1, 5))])
    return found


def path_candidates(code: str) -> list[str]:
    """The words of a piece of code that name a repository path."""
    found = []
    for word in code.split():
        word = word.strip("'\"()`").rstrip(",;.")
        if not word or word.startswith(("/", "~", "-")):
            continue
        if _NOT_A_PATH & set(word) or not re.search(r"[A-Za-z]", word) or not _PATHLIKE.match(word):
            continue
        if "/" in word or (word.endswith(EXTENSIONS) and word not in EXTENSIONS):
            found.append(word)
    return found


def make_targets_named(code: str) -> list[str]:
    return [match.group(1) for match in _MAKE.finditer(code)]


def doc_problems(
    text: str, doc_dir: Path, root: Path = ROOT, targets: set[str] | None = None, bases: tuple[str, ...] = ()
) -> list[str]:
    """What a doc names that does not exist: one message per missing path, heading or make target.

    A path in code is relative to the root, or to one of `bases` (folders of the
    repository a doc is about, which it names files of by their short names).
    """
    if targets is None:
        targets = makefile_targets(root / "Makefile")
    ignored = gitignore_patterns(root)
    code, links = code_and_links(text)
    problems: list[str] = []

    def exists(name: str, base_dirs: list[Path], how: str) -> bool:
        relpaths = []
        for base in base_dirs:
            # normpath, not resolve: a symlink into the venv is still a path of the repository.
            target = Path(os.path.normpath(base / name))
            try:
                relpath = target.relative_to(os.path.normpath(root)).as_posix()
            except ValueError:
                continue
            if is_ignored(relpath, ignored) or target.exists():
                return True
            relpaths.append(relpath)
        if relpaths:
            problems.append(f"{how} {name!r}: no such file or folder ({', '.join(relpaths)})")
        else:
            problems.append(f"{how} {name!r} points outside the repository")
        return False

    for piece in code:
        for word in path_candidates(piece):
            if word.startswith(("./", "../")):
                exists(word, [doc_dir], "path")
            else:
                exists(word, [root, *(root / base for base in bases)], "path")
        for target in make_targets_named(piece):
            if target not in targets:
                problems.append(f"`make {target}`: the Makefile has no such target")

    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.IGNORECASE):
            continue  # a URL or mailto:
        name, _, fragment = link.split("?", 1)[0].partition("#")
        if _NOT_A_PATH & set(name):
            continue
        if not name:
            if fragment and fragment not in anchors(text):
                problems.append(f"link {link!r}: no such heading in this doc")
            continue
        base = root if name.startswith("/") else doc_dir
        if not exists(name.lstrip("/"), [base], "link") or not fragment:
            continue
        target = base / name.lstrip("/")
        if target.suffix == ".md" and target.is_file() and fragment not in anchors(target.read_text()):
            problems.append(f"link {link!r}: {name} has no such heading")
    return problems


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# The runbooks are about the prometheus role's alert rules and name its files
# (`node.rules.yml`, `templates/slo.rules.yml.j2`) by their short names.
BASES = {"docs/runbooks": ("roles/prometheus", "roles/prometheus/files/rules")}


@pytest.mark.parametrize("doc", docs(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_path_and_make_target_a_doc_names_exists(doc):
    bases = BASES.get(doc.parent.relative_to(ROOT).as_posix(), ())
    problems = doc_problems(doc.read_text(), doc.parent, bases=bases)
    assert not problems, f"{doc.relative_to(ROOT)} names what does not exist:\n" + "\n".join(problems)


def test_the_readme_names_the_two_commands_and_links_into_docs():
    """The check reads what it should: were the extraction broken, the test above could not fail."""
    code, links = code_and_links((ROOT / "README.md").read_text())
    named = {target for piece in code for target in make_targets_named(piece)}
    assert {"site", "test"} <= named
    assert any(link.startswith("docs/") for link in links)
    paths = {word for piece in code for word in path_candidates(piece)}
    assert "inventories/lab/hosts.yml" in paths
    assert len(paths) + len(links) >= 20


def _tiny_repository(root: Path) -> Path:
    (root / "Makefile").write_text(
        "VENV := .venv\n.PHONY: site test\nsite: lab-up ## converge\n\tansible-playbook site.yml\n"
        "test: ## everything\n\ttrue\nlab-up:\n\ttrue\n$(VENV)/.installed: requirements.txt\n\ttouch $@\n"
    )
    (root / ".gitignore").write_text("/.venv/\n/.lab/\n/build/\n.pki/\n")
    (root / "site.yml").write_text("---\n")
    (root / "roles" / "common" / "tasks").mkdir(parents=True)
    (root / "roles" / "common" / "tasks" / "main.yml").write_text("---\n")
    (root / "docs").mkdir()
    (root / "docs" / "operations.md").write_text("# Operations\n\n## Real hosts: step by step\n")
    return root


def test_the_makefile_targets_are_its_rules_not_its_variables(tmp_path):
    root = _tiny_repository(tmp_path)
    assert makefile_targets(root / "Makefile") == {"site", "test", "lab-up"}


def test_a_doc_that_names_only_what_exists_passes(tmp_path):
    root = _tiny_repository(tmp_path)
    text = """# Guide

Run `make site`, then `make test`; `site.yml` orders `roles/common/tasks/main.yml`.
See [operations](operations.md#real-hosts-step-by-step) and [the playbook](../site.yml).

```sh
make site            # converge; see roles/missing.yml for nothing, a comment
ansible-playbook -i inventories/<site>/hosts.yml site.yml
ssh -F .lab/ssh/config app1 cat /etc/sevenleague/pki/current/cert.pem
.venv/bin/ansible all -m ping
curl -s 'http://127.0.0.1:8080/?name=lab'
```

```mermaid
flowchart LR
    a["roles/not-read.yml"] --> b
```

Not paths: `.py`, `roles/*/defaults/main.yml`, `roles/<role>/meta/main.yml`, `~/.ssh/config`,
`/var/log/hosts/app2/hello.log`, `10.213.7.0/24`, `TLS 1.2/1.3`, `-e version=1.2.0-1`,
`$SEVENLEAGUE_STATE_DIR/.pki/`, `build/debs/`, `inventories/lab/.pki/`, <https://example.org/x.md>,
[upstream](https://github.com/ansible/ansible/issues/66402), [top](#guide), `ansible_local.pki`,
`ansible_collections.sevenleague.platform.plugins.module_utils.<name>`. Make sure of nothing.
"""
    assert doc_problems(text, root / "docs", root) == []


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("The playbook is `playbooks/deploy.yml`.", "playbooks/deploy.yml"),
        ("The settings: `pyproject.toml`.", "pyproject.toml"),
        ("Shared code: `collections/ansible_collections/sevenleague/platform/`.", "collections/"),
        ("Run `ansible-playbook playbooks/rotate-ca.yml` to roll over.", "playbooks/rotate-ca.yml"),
        ("```sh\nansible-playbook playbooks/rotate-ca.yml --check\n```\n", "playbooks/rotate-ca.yml"),
        ("Read [the runbooks](runbooks/README.md).", "runbooks/README.md"),
        ("Read [the role](../roles/pki/README.md#variables).", "roles/pki/README.md"),
        ("Read `./runbooks/InstanceDown.md`.", "runbooks/InstanceDown.md"),
        ("Read [the steps](operations.md#real-hosts).", "operations.md has no such heading"),
        ("# Guide\n\nRead [the steps](#steps).", "no such heading in this doc"),
        ("Then `make lint`.", "make lint"),
        ("```sh\nmake -j2 bench\n```\n", "make bench"),
    ],
)
def test_a_doc_that_names_a_missing_file_or_target_fails(tmp_path, text, missing):
    root = _tiny_repository(tmp_path)
    problems = doc_problems(text, root / "docs", root)
    assert len(problems) == 1 and missing in problems[0], problems


def test_a_link_out_of_the_repository_fails(tmp_path):
    (tmp_path / "repo").mkdir()
    root = _tiny_repository(tmp_path / "repo")
    assert doc_problems("[x](../../elsewhere.md)", root / "docs", root) == [
        "link '../../elsewhere.md' points outside the repository"
    ]


def test_a_short_name_is_found_in_the_folders_a_doc_is_about(tmp_path):
    root = _tiny_repository(tmp_path)
    text = "The tasks: `tasks/main.yml`, and `main.yml`."
    assert len(doc_problems(text, root / "docs", root)) == 2
    assert doc_problems(text, root / "docs", root, bases=("roles/common", "roles/common/tasks")) == []
    problems = doc_problems("`tasks/gone.yml`", root / "docs", root, bases=("roles/common",))
    assert problems == ["path 'tasks/gone.yml': no such file or folder (tasks/gone.yml, roles/common/tasks/gone.yml)"]
