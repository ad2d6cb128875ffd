"""apt preferences that let one origin provide only the packages named.

    Package: {{ ['envoy', 'greeter'] | sevenleague_apt_names_except }}

gives an apt regular expression (POSIX extended, between slashes) matching every package name
except those listed. apt_preferences has no "every name but these" record, and a record naming the
allowed packages would outrank the version ansible.builtin.apt asks for (the module pins it after
reading the preferences, and the first record naming a package's version wins). A record matching
every other name instead leaves the allowed names to the origin's general record, where the
module's pin still decides.
"""

from __future__ import annotations

import re

# Debian policy 5.6.1: lower case letters, digits, plus, minus and dots, two characters at least,
# starting with a letter or digit.
NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def _literal(char: str) -> str:
    return "\\" + char if char in ".+" else char


def _bracket(chars: list[str]) -> str:
    # In a bracket expression '.' and '+' are literal; '-' goes last to be literal too.
    return "".join(sorted(c for c in chars if c != "-")) + ("-" if "-" in chars else "")


def names_except(names) -> str:
    """An anchored apt regex (/^...$/) matching any package name but `names`."""
    if isinstance(names, str) or not names:
        raise ValueError("names_except takes a non-empty list of package names")
    bad = [n for n in names if not isinstance(n, str) or not NAME.match(n)]
    if bad:
        raise ValueError(f"not Debian package names: {bad}")
    trie: dict = {}
    for name in names:
        node = trie
        for char in name:
            node = node.setdefault(char, {})
        node[""] = {}

    def rest(node: dict) -> str:
        """The suffixes after this node's prefix that do not complete a listed name."""
        children = sorted(c for c in node if c)
        alternatives = [f"[^{_bracket(children)}].*" if children else ".+"]
        alternatives += [_literal(c) + rest(node[c]) for c in children]
        # Ending here is fine unless a listed name ends here.
        return "(" + "|".join(alternatives) + ")" + ("" if "" in node else "?")

    return f"/^{rest(trie)}$/"


class FilterModule:
    def filters(self):
        return {"sevenleague_apt_names_except": names_except}
