"""The strict_types action's checks: the real type of a value, not what
Ansible could coerce it into."""

from pathlib import Path

import pytest
from strict_types import check_options, check_value, load_options

ROOT = Path(__file__).resolve().parents[2]
RULE = {
    "name": {"type": "str", "required": True},
    "port": {"type": "raw", "required": True},
    "proto": {"type": "str", "choices": ["tcp", "udp"]},
    "sources": {"type": "list", "elements": "str"},
}


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"type": "list", "elements": "str"}, ["a", "b"]),
        ({"type": "dict"}, {"a": 1}),
        ({"type": "bool"}, False),
        ({"type": "int"}, 22),
        ({"type": "str"}, "03:30"),
        ({"type": "raw"}, 9100),
        ({"type": "str", "choices": ["no", "prohibit-password"]}, "no"),
        ({"type": "list"}, None),
    ],
)
def test_values_of_the_right_type_pass(spec, value):
    assert check_value("v", spec, value) == []


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (
            {"type": "list", "elements": "str"},
            "10.0.0.0/8",
            "v must be a list, but is the string '10.0.0.0/8' (write it as a YAML list: [10.0.0.0/8])",
        ),
        ({"type": "bool"}, "yes", "v must be true or false, but is the string 'yes'"),
        ({"type": "int"}, "22", "v must be an integer, but is the string '22'"),
        ({"type": "int"}, True, "v must be an integer, but is the boolean True"),
        # YAML 1.1 reads an unquoted 03:30 as the sexagesimal integer 210.
        ({"type": "str"}, 210, "v must be a string, but is the integer 210"),
        ({"type": "dict"}, ["a"], "v must be a mapping, but is a list"),
        ({"type": "list", "elements": "str"}, ["a", 1], "v[1] must be a string, but is the integer 1"),
        (
            {"type": "str", "choices": ["no", "prohibit-password"]},
            "yes",
            "v is 'yes'; choose one of no, prohibit-password",
        ),
    ],
)
def test_values_of_the_wrong_type_are_named(spec, value, message):
    assert check_value("v", spec, value) == [message]


def test_list_of_dicts_is_checked_key_by_key():
    spec = {"type": "list", "elements": "dict", "options": RULE}
    problems = check_value(
        "rules",
        spec,
        [
            {"name": "ok", "port": 80, "sources": ["10.0.0.1"]},
            {"port": 80, "proto": "icmp", "sourcez": []},
        ],
    )
    assert problems == [
        "rules[1].name is required",
        "rules[1].proto is 'icmp'; choose one of tcp, udp",
        "rules[1].sourcez is not a known key; use one of name, port, proto, sources",
    ]


def test_unset_top_level_options_are_left_to_the_defaults():
    assert check_options({"a": {"type": "int", "required": True}}, {}) == []


def test_every_role_spec_loads():
    for spec_file in ROOT.glob("roles/*/meta/argument_specs.yml"):
        assert load_options(str(spec_file), "main")


def test_secret_values_are_never_shown():
    spec = {"type": "str", "no_log": True}
    assert check_value("passphrase", spec, 12345678) == ["passphrase must be a string, but is a int (value hidden)"]
