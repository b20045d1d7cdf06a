"""
The admin listener: twisted.web resources for operators (Prometheus
C{/metrics} so far; the JSON API and its authentication are built on the
same site).
"""
