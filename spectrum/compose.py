"""
The composition root: the one place that builds the parts of a spectrum
process and wires them together.

  - L{SpectrumService}: the data plane (listeners, app runtimes, admission,
    the rule book, analytics, the event log, the kernel filter);
  - the store and its L{Cluster} (with C{store}), which share rules, apps,
    figures and rates with other nodes;
  - the admin (the API, the page and C{/metrics}) when the config has
    C{admin}.

Each part is handed what it uses. The data plane imports neither the
admin nor the cluster; the cluster and the admin do not reach into each
other (the rules they both change have one owner,
L{spectrum.rulebook.RuleBook}).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from spectrum.config_files import load_checked
from spectrum.model import Config
from spectrum.service import SpectrumService


def build(
    config: Config,
    reactor: Any = None,
    drain_timeout: float = 10.0,
    loader: Callable[[str], Config] = load_checked,
    handle_sighup: bool = False,
    admin_state: Any = None,
    store: Optional[Any] = None,
) -> SpectrumService:
    """
    A spectrum for C{config}: its data plane, with the cluster over C{store}
    (a L{spectrum.store} store) and the admin when the config asks for them.
    """
    service = SpectrumService(
        config,
        reactor=reactor,
        drain_timeout=drain_timeout,
        loader=loader,
        handle_sighup=handle_sighup,
        admin_state=admin_state,
    )
    shared = None
    if store is not None:
        from spectrum.cluster.node import Cluster

        shared = Cluster(store, reactor=service.reactor)
        shared.attach(service)
    if config.admin is not None:
        from spectrum.admin.site import AdminService, admin_root

        root = admin_root(service.analytics, service.rules.firewall, service=service, shared=shared)
        service.admin = AdminService(config.admin, root, service.reactor)
        service.admin.setServiceParent(service)
    return service
