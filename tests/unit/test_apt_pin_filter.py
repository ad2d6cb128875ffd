"""The allow-list of the internal origin (plugins/filter/apt_pin.py): the regex apt reads matches every
package name but the project's own."""

import re

import apt_pin
import pytest

PROJECT = ["envoy", "frontend", "greeter", "openbao", "sevenleague-host"]


def matches(pattern: str, name: str) -> bool:
    assert pattern.startswith("/") and pattern.endswith("/")
    # apt compiles it as POSIX extended; Python's re agrees on this subset (no back references,
    # no classes), which the test below checks by the characters used.
    return re.search(pattern[1:-1], name) is not None


def test_the_projects_names_are_left_to_the_general_record():
    pattern = apt_pin.names_except(PROJECT)
    assert not [name for name in PROJECT if matches(pattern, name)]


@pytest.mark.parametrize(
    "name",
    [
        "curl",
        "openssh-server",
        "e",
        "en",
        "envo",
        "envoyx",
        "envoy-extra",
        "greeter2",
        "greete",
        "sevenleague",
        "sevenleague-host-extra",
        "sevenleague-hosts",
        "openbao-cli",
        "libc6",
        "g++",
        "python3.11",
        "0ad",
    ],
)
def test_every_other_name_matches(name):
    assert matches(apt_pin.names_except(PROJECT), name)


def test_dots_and_pluses_in_names_are_literal():
    pattern = apt_pin.names_except(["g++", "python3.11"])
    assert not matches(pattern, "g++") and not matches(pattern, "python3.11")
    assert matches(pattern, "gxx") and matches(pattern, "python3x11") and matches(pattern, "g+")


def test_only_extended_regex_syntax_that_apt_shares_with_python():
    pattern = apt_pin.names_except(PROJECT)
    assert set(pattern) <= set("/^$()[]|?.*+-\\abcdefghijklmnopqrstuvwxyz0123456789"), pattern
    assert "\\" not in pattern.replace("\\.", "").replace("\\+", "")


@pytest.mark.parametrize("names", [[], "greeter", ["Greeter"], ["a"], ["greeter; rm"], [None]])
def test_anything_but_a_list_of_package_names_is_refused(names):
    with pytest.raises(ValueError):
        apt_pin.names_except(names)
