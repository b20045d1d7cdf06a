"""
Status codes of connection events, as Cloudflare Spectrum's event logs use
them, plus the few that spectrum adds (marked below).
"""

OPENED = 0  # connection opened
NORMAL = 200  # normal closure
INVALID_SNI = 400  # the first bytes (ClientHello, Minecraft handshake) named no app on this port
FIREWALL = 403  # refused by an access rule
IDLE_TIMEOUT = 408  # spectrum: closed after timeouts.idle without a byte
PER_IP_RATE = 429  # spectrum: refused, the client's address is over limits.per_ip_rate
PER_IP_CONNECTIONS = 430  # spectrum: refused, the client's address has limits.per_ip_connections open
MAX_CONNECTIONS = 431  # spectrum: refused, the app has limits.max_connections open
SESSION_LIMIT = 432  # spectrum: the app's or the client's UDP session cap is reached
BAD_PROXY_HEADER = 491  # spectrum: inbound PROXY header malformed, too long, or late
CLIENT_TLS_FAILED = 443  # the client's TLS handshake failed
ORIGIN_RESET = 444  # the origin reset an established connection
ORIGIN_TIMEOUT = 445  # an established origin connection timed out
ORIGIN_ERROR = 447  # error reading from or writing to the origin
ORIGIN_BROKEN_PIPE = 448  # the origin connection broke (EPIPE)
CLIENT_ERROR = 495  # the client connection failed (reset, refused)
CLIENT_TIMEOUT = 497  # an established client connection timed out
SHUTDOWN = 503  # spectrum: closed at stop after the drain deadline
ORIGIN_REFUSED = 521  # every origin tried refused the connection
ORIGIN_CONNECT_TIMEOUT = 522  # every origin tried timed out
ORIGIN_UNREACHABLE = 523  # no origin could be resolved or reached
NO_HEALTHY_ORIGIN = 530  # spectrum: no origin was usable to try
ORIGIN_TLS_FAILED = 525  # spectrum: the TLS handshake with the origin failed
ORIGIN_TLS_INVALID = 526  # spectrum: the origin's certificate did not verify

DESCRIPTIONS = {
    OPENED: "connection opened",
    NORMAL: "normal closure",
    INVALID_SNI: "invalid SNI",
    FIREWALL: "refused by an access rule",
    IDLE_TIMEOUT: "idle timeout",
    PER_IP_RATE: "over the per-address connection rate",
    PER_IP_CONNECTIONS: "too many connections from this address",
    MAX_CONNECTIONS: "too many connections to this app",
    SESSION_LIMIT: "session limit reached",
    BAD_PROXY_HEADER: "bad PROXY header",
    CLIENT_TLS_FAILED: "client TLS handshake failed",
    ORIGIN_RESET: "origin reset the connection",
    ORIGIN_TIMEOUT: "origin connection timed out",
    ORIGIN_ERROR: "origin connection error",
    ORIGIN_BROKEN_PIPE: "origin connection broken",
    CLIENT_ERROR: "client connection error",
    CLIENT_TIMEOUT: "client connection timed out",
    SHUTDOWN: "closed at shutdown",
    ORIGIN_REFUSED: "origin refused the connection",
    ORIGIN_CONNECT_TIMEOUT: "origin connect timed out",
    ORIGIN_UNREACHABLE: "origin unreachable",
    NO_HEALTHY_ORIGIN: "no usable origin",
    ORIGIN_TLS_FAILED: "origin TLS handshake failed",
    ORIGIN_TLS_INVALID: "origin certificate invalid",
}
