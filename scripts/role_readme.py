#!/usr/bin/env python3
"""Write each role's variable reference into its README from the argument spec.

The section between `<!-- BEGIN argument_specs -->` and `<!-- END
argument_specs -->` in roles/<role>/README.md is generated, so the README
cannot drift from meta/argument_specs.yml.

    scripts/role_readme.py          rewrite the sections
    scripts/role_readme.py --check  exit 1 if any section is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN argument_specs -->"
END = "<!-- END argument_specs -->"


def _cell(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    text = text.removesuffix("...").strip()
    return f"`{text}`".replace("|", "\\|")


def _describe(spec: dict) -> str:
    description = spec.get("description", "")
    if isinstance(description, list):
        description = " ".join(description)
    if spec.get("choices"):
        description += " One of " + ", ".join(f"`{c}`" for c in spec["choices"]) + "."
    return description.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _type(spec: dict) -> str:
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        kind = f"list of {spec['elements']}"
    return kind


def render(spec_file: Path) -> str:
    specs = (yaml.safe_load(spec_file.read_text()) or {}).get("argument_specs", {})
    out = []
    for entry_point, entry in specs.items():
        out.append(f"### Entry point `{entry_point}`")
        out.append("")
        if entry.get("short_description"):
            out.append(entry["short_description"] + ".")
            out.append("")
        out.append("| variable | type | default | description |")
        out.append("|---|---|---|---|")
        for name, spec in (entry.get("options") or {}).items():
            spec = spec or {}
            default = "required" if spec.get("required") else _cell(spec.get("default"))
            out.append(f"| `{name}` | {_type(spec)} | {default} | {_describe(spec)} |")
            for sub, subspec in (spec.get("options") or {}).items():
                subspec = subspec or {}
                sub_default = (
                    "required"
                    if subspec.get("required")
                    else (_cell(subspec["default"]) if "default" in subspec else "")
                )
                out.append(f"| &nbsp;&nbsp;`.{sub}` | {_type(subspec)} | {sub_default} | {_describe(subspec)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def update(readme: Path, body: str) -> str:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: add the lines {BEGIN} and {END} where the variables go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report out-of-date READMEs")
    args = parser.parse_args()
    stale = []
    for spec_file in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        readme = spec_file.parents[1] / "README.md"
        if not readme.exists():
            stale.append(f"{readme.relative_to(ROOT)} is missing")
            continue
        new = update(readme, render(spec_file))
        if new != readme.read_text():
            if args.check:
                stale.append(f"{readme.relative_to(ROOT)} is out of date: run scripts/role_readme.py")
            else:
                readme.write_text(new)
                print(f"updated {readme.relative_to(ROOT)}")
    for line in stale:
        print(line, file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
