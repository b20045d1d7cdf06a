"""
The one owner of the access rules.

Rules come from two places: the config file (C{access_rules}, replaced
by a reload) and the admin API, here or on another node of a cluster (made
at run time, kept in the state file, shared through the store). The
L{RuleBook} holds both:

  - the L{Firewall} is its index: every rule in force, file and API alike;
  - the API's rules with their metadata (scope, created and modified
    times), which a reload of the file keeps in force;
  - their persistence: each change through the API is written to the state
    file, or undone (nothing changes when the file cannot be written);
  - the documents other nodes see (L{documents}), and the changes they
    send (L{apply}).

The admin API, the cluster and the reload all go through it; nothing else
keeps a copy of the rules.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from twisted.logger import Logger

from spectrum.firewall import Firewall
from spectrum.model import AccessRule, Config
from spectrum.rules import DuplicateRule, RuleError, make_rule, now_iso

#: where a rule came from, as the API shows it
FROM_CONFIG = "config"
FROM_API = "api"


class RuleBook:
    """
    The access rules of this node: the config file's and the API's.

    @ivar firewall: the index every decision uses.
    @ivar state: where the API's rules are kept (None: nowhere).
    @ivar changed: called after a change made here (not one applied from
        the store), so the cluster can share it.
    """

    log = Logger()

    def __init__(self, firewall: Firewall, clock: Callable[[], float], file_rules: Tuple[AccessRule, ...] = ()) -> None:
        self.firewall = firewall
        self.clock = clock
        self.started_on = now_iso(clock())
        self.state: Optional[Any] = None
        self.changed: List[Callable[[], None]] = []
        #: the API's rules in force: id -> metadata
        self._made: Dict[str, Dict[str, Any]] = {}
        #: the API's rules as last in force (put back after a reload)
        self._rules: Dict[str, AccessRule] = {}
        self._file_rules = file_rules

    # reading -------------------------------------------------------------------

    def rules(self, app: Optional[str]) -> List[AccessRule]:
        """
        The rules of one scope: every app's (C{None}) or C{app}'s.
        """
        return [rule for rule in self.firewall.rules if rule.app == app]

    def get(self, id: str) -> AccessRule:
        """
        @raise KeyError: no rule has this id.
        """
        return self.firewall.get(id)

    def made(self, id: str) -> bool:
        """
        Whether rule C{id} was made through the API (here or on another
        node): only those may change at run time.
        """
        return id in self._made

    def meta(self, rule: AccessRule) -> Dict[str, Any]:
        """
        C{rule}'s scope, source and times.
        """
        meta = self._made.get(rule.id)
        if meta is not None:
            return meta
        return {
            "scope": "app" if rule.app else "zone",
            "source": FROM_CONFIG,
            "created_on": self.started_on,
            "modified_on": self.started_on,
        }

    def documents(self, leaving: Iterable[str] = ()) -> Dict[str, Dict[str, Any]]:
        """
        The API's rules as the state file and the store keep them, by id
        (without those in C{leaving}).
        """
        gone = set(leaving)
        result: Dict[str, Dict[str, Any]] = {}
        for rule in self.firewall.rules:
            meta = self._made.get(rule.id)
            if meta is None or rule.id in gone:
                continue
            result[rule.id] = {
                "id": rule.id,
                "mode": rule.mode,
                "configuration": {"target": rule.target, "value": rule.value},
                "notes": rule.notes,
                "app": rule.app,
                "scope": meta["scope"],
                "created_on": meta["created_on"],
                "modified_on": meta["modified_on"],
            }
        return result

    def made_for(self, app: str) -> List[str]:
        """
        The ids of the API's rules scoped to C{app}.
        """
        return [rule.id for rule in self.firewall.rules if rule.app == app and rule.id in self._made]

    # changes made here (the admin API) -------------------------------------------

    def create(self, rule: AccessRule, scope: str) -> AccessRule:
        """
        Put C{rule} in force and keep it.

        @raise DuplicateRule: the same rule is there.
        @raise spectrum.admin.state.StateError: it could not be kept
            (nothing changed).
        """
        rule = self.firewall.add(rule)
        now = now_iso(self.clock())
        self._keep(rule, {"scope": scope, "source": FROM_API, "created_on": now, "modified_on": now})
        self._commit(undo=lambda: self._drop(rule.id))
        self.log.info(
            "access rule {id} added: {mode} {target} {value}",
            id=rule.id,
            mode=rule.mode,
            target=rule.target,
            value=rule.value,
        )
        return rule

    def edit(self, id: str, mode: Optional[str], notes: Optional[str]) -> AccessRule:
        """
        Change an API rule's mode or notes.

        @raise RuleError: C{mode} is not a mode.
        @raise spectrum.admin.state.StateError: as L{create}.
        """
        old = self.firewall.get(id)
        rule = self.firewall.update(id, mode=mode, notes=notes)
        self._rules[id] = rule
        meta = self._made[id]
        previous = meta["modified_on"]
        meta["modified_on"] = now_iso(self.clock())

        def undo() -> None:
            self._rules[id] = self.firewall.update(id, mode=old.mode, notes=old.notes)
            meta["modified_on"] = previous

        self._commit(undo)
        return rule

    def delete(self, id: str) -> AccessRule:
        """
        Take an API rule out of force.

        @raise spectrum.admin.state.StateError: as L{create}.
        """
        rule = self.firewall.get(id)
        meta = self._made[id]
        self._drop(id)
        self._commit(undo=lambda: self._keep(self.firewall.add(rule), meta))
        return rule

    def forget(self, ids: Iterable[str]) -> None:
        """
        Take API rules out of force whose removal is already kept (an app's
        rules, written to the state file with the app's removal).
        """
        ids = list(ids)
        for id in ids:
            self._drop(id)
        if ids:
            self._tell()

    def _keep(self, rule: AccessRule, meta: Dict[str, Any]) -> None:
        self._made[rule.id] = meta
        self._rules[rule.id] = rule

    def _drop(self, id: str) -> None:
        try:
            self.firewall.remove(id)
        except KeyError:
            pass
        self._made.pop(id, None)
        self._rules.pop(id, None)

    def _commit(self, undo: Callable[[], None]) -> None:
        state = self.state
        if state is not None:
            previous = state.rules
            state.rules = list(self.documents().values())
            try:
                state.save()
            except Exception:
                state.rules = previous
                undo()
                raise
        self._tell()

    def _tell(self) -> None:
        for changed in self.changed:
            changed()

    def _save(self) -> None:
        """
        Keep the rules after a change that is not the API's to undo (from
        the store): a failure is logged.
        """
        state = self.state
        if state is None:
            return
        state.rules = list(self.documents().values())
        try:
            state.save()
        except Exception as e:
            self.log.warn("state file: {error}", error=str(e))

    # changes from elsewhere -------------------------------------------------------

    def restore(self) -> None:
        """
        Put the state file's rules in force (at start).
        """
        if self.state is not None:
            self._take(self.state.rules, "state file", default_scope="user")

    def apply(self, changes: Dict[str, Optional[Dict[str, Any]]]) -> None:
        """
        Rules other nodes made, changed (a document) or deleted (None).
        """
        for id, doc in changes.items():
            if doc is None:
                self._drop(id)
                self.log.info("access rule {id} removed (from the store)", id=id)
                continue
            rule = self._take([dict(doc, id=id)], "store", default_scope="user")
            if rule is not None:
                self.log.info(
                    "access rule {id} in force (from the store): {mode} {target} {value}",
                    id=id,
                    mode=rule.mode,
                    target=rule.target,
                    value=rule.value,
                )
        self._save()

    def _take(self, documents: Iterable[Dict[str, Any]], where: str, default_scope: str) -> Optional[AccessRule]:
        """
        Put rule C{documents} in force, replacing a rule of the same id; a
        document that is not a usable rule is logged and skipped. The last
        rule put in force.
        """
        rule: Optional[AccessRule] = None
        for doc in documents:
            try:
                configuration = doc["configuration"]
                new = make_rule(
                    doc["mode"],
                    configuration["target"],
                    configuration["value"],
                    doc.get("notes", ""),
                    doc.get("app"),
                    doc["id"],
                )
                try:
                    old: Optional[AccessRule] = self.firewall.get(new.id)
                except KeyError:
                    old = None
                if old is not None and (old.target, old.value, old.app) == (new.target, new.value, new.app):
                    new = self.firewall.update(new.id, mode=new.mode, notes=new.notes)
                else:
                    if old is not None:
                        self.firewall.remove(new.id)
                    new = self.firewall.add(new)
            except (KeyError, TypeError, RuleError, DuplicateRule) as e:
                self.log.warn(
                    "{where}: access rule {rule!r} not in force: {error}", where=where, rule=doc, error=str(e)
                )
                continue
            self._keep(
                new,
                {
                    "scope": doc.get("scope", default_scope),
                    "source": FROM_API,
                    "created_on": doc.get("created_on", self.started_on),
                    "modified_on": doc.get("modified_on", self.started_on),
                },
            )
            rule = new
        return rule

    def configure(self, config: Config) -> None:
        """
        A reload: the file's rules, when they changed, replace the file's
        rules in force, and the API's stay (at once: no moment without them).
        """
        if config.access_rules == self._file_rules:
            return
        fresh = Firewall(config.access_rules)
        for id in list(self._made):
            try:
                fresh.add(self._rules[id])
            except (DuplicateRule, RuleError) as e:
                self.log.warn(
                    "access rule {id} made through the API is no longer in force: {error}", id=id, error=str(e)
                )
                self._made.pop(id)
                self._rules.pop(id)
        self.firewall.replace(fresh.rules)
        self._file_rules = config.access_rules
        self.log.info("access rules: {count} in force", count=len(self.firewall))
        self._save()
