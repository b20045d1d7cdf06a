"""
The admin site: a Cloudflare-shaped v4 JSON API, Prometheus C{/metrics} and
a browser page, served by twisted.web on C{admin.listen} (loopback by
default).
"""
