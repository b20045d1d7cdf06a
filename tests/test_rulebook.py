"""
The access rules' one owner: the file's rules and the API's in one index,
the API's kept through reloads, written to the state file or not changed at
all, and the same documents for the state file and the store.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from spectrum.admin.state import StateError
from spectrum.firewall import Firewall
from spectrum.model import AccessRule, Config
from spectrum.rulebook import RuleBook
from spectrum.rules import DuplicateRule, make_rule


class State:
    """
    A state file that can be told to fail.
    """

    def __init__(self) -> None:
        self.rules: List[Dict[str, Any]] = []
        self.saved: List[List[Dict[str, Any]]] = []
        self.broken = False

    def save(self) -> None:
        if self.broken:
            raise StateError("state.json: cannot write the state file: No space left on device")
        self.saved.append(list(self.rules))


def file_rule(value: str) -> AccessRule:
    return AccessRule(mode="block", target="ip", value=value, id=f"file-{value}")


def book(*rules: AccessRule) -> RuleBook:
    result = RuleBook(Firewall(rules), lambda: 1_800_000_000.0, tuple(rules))
    result.state = State()
    return result


def test_a_reload_replaces_the_files_rules_and_keeps_the_apis() -> None:
    rules = book(file_rule("192.0.2.1"))
    made = rules.create(make_rule("block", "ip", "198.51.100.7", "from the API", None, "api-1"), "zone")
    changes: List[int] = []
    rules.firewall.watchers.append(lambda firewall: changes.append(len(firewall)))
    rules.configure(Config(apps=(), access_rules=(file_rule("192.0.2.2"),)))
    assert {rule.id for rule in rules.firewall.rules} == {"file-192.0.2.2", made.id}
    # One change: at no moment was the API's rule out of force.
    assert changes == [2]
    assert not rules.firewall.decide("x", "198.51.100.7").allowed
    assert rules.firewall.decide("x", "192.0.2.1").allowed
    assert rules.meta(rules.get("file-192.0.2.2"))["source"] == "config"
    assert rules.meta(made)["source"] == "api"


def test_an_api_rule_the_file_now_has_leaves_with_a_line() -> None:
    rules = book()
    rules.create(make_rule("block", "ip", "198.51.100.7", "", None, "api-1"), "zone")
    rules.configure(Config(apps=(), access_rules=(file_rule("198.51.100.7"),)))
    assert [rule.id for rule in rules.firewall.rules] == ["file-198.51.100.7"]
    assert rules.documents() == {}
    assert rules.state.rules == []


def test_a_change_the_state_file_refuses_changes_nothing() -> None:
    rules = book()
    kept = rules.create(make_rule("block", "ip", "198.51.100.7", "before", None, "api-1"), "zone")
    told: List[str] = []
    rules.changed.append(lambda: told.append("changed"))
    rules.state.broken = True
    with pytest.raises(StateError):
        rules.create(make_rule("block", "ip", "198.51.100.8", "", None, "api-2"), "zone")
    with pytest.raises(StateError):
        rules.edit(kept.id, "whitelist", "after")
    with pytest.raises(StateError):
        rules.delete(kept.id)
    assert rules.firewall.rules == (kept,)
    assert rules.documents()[kept.id]["notes"] == "before"
    assert [doc["id"] for doc in rules.state.rules] == [kept.id]
    assert told == []


def test_the_stores_changes_and_the_state_files_rules_are_the_same_documents() -> None:
    rules = book()
    made = rules.create(make_rule("block", "ip", "198.51.100.7", "", "game", "api-1"), "app")
    document = rules.documents()[made.id]
    other = book()
    other.apply({made.id: document})
    assert other.documents() == {made.id: document}
    assert other.made(made.id) and other.made_for("game") == [made.id]
    assert other.state.rules == [document]
    with pytest.raises(DuplicateRule):
        other.create(make_rule("block", "ip", "198.51.100.7", "", "game", "api-2"), "app")
    other.apply({made.id: None})
    assert other.documents() == {} and len(other.firewall) == 0
    restored = book()
    restored.state.rules = [document]
    restored.restore()
    assert restored.documents() == {made.id: document}
