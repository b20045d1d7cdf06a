"""
This node's side of the shared store.

The data plane never waits here: it reads the local firewall and the local
config, which this module keeps in step with the store, and it writes to
the local analytics, which this module copies to the store on a timer.

  - Access rules and apps made through the admin API are documents in the
    store. A change on any node is published; every node applies it to its
    own firewall or config within a second (L{changed}).
  - Analytics: every second the node's counters (L{flatten} of
    L{spectrum.analytics.Analytics}) are diffed against the last second's,
    and the difference is filed under the current minute. The store sums
    them per node and per minute; L{view} is the cluster's sum, rebuilt
    every second, which the admin API reports.
  - Recent events (closed and refused connections) and each node's view of
    origin health go to the store too.

When the store is out of reach, rules and apps stay as they were last
known, the API still changes the local node (the change is pushed when the
store returns), and counter differences wait in memory, one bucket per
minute, for at most L{MAX_PENDING_MINUTES} minutes: older buckets are
merged into the oldest one kept, so no count is ever dropped, only filed
under a later minute. Events wait up to L{MAX_PENDING_EVENTS}; older ones
are dropped (and counted). When the store comes back the node resyncs:
documents are read again (and pushed, when the store lost them), and if
the store lost this node's figures (a Redis restarted without
persistence), the node pushes them again from what it remembers.

Its modules: L{spectrum.cluster.node} (the L{Cluster} service: documents
and figures to and from the store), L{spectrum.cluster.figures} (analytics
as flat counters that add up across nodes, and the cluster's view built
from them) and L{spectrum.cluster.rate} (C{per_ip_rate} counted across
nodes).
"""
