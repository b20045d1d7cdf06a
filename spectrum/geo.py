"""
Client country and AS number from MaxMind DB files (GeoLite2-Country,
GeoLite2-City, GeoLite2-ASN or any database of the same shape), read with
the C{maxminddb} library from memory-mapped files: a lookup is a local tree
walk of a few microseconds, never a network call.
"""

from __future__ import annotations

import platform
from typing import Any, Optional, Tuple

import maxminddb

from spectrum.fileio import check_regular

#: The country of a client the database does not place (Cloudflare's XX).
UNKNOWN_COUNTRY = "XX"


class GeoIPError(Exception):
    """
    A database file could not be opened; C{str()} is one line.
    """


#: The C reader, except on PyPy: there it aborts the process when iterated
#: (cpyext), and the pure-Python reader is what the JIT runs fast anyway.
_MODE = maxminddb.MODE_MMAP if platform.python_implementation() == "PyPy" else maxminddb.MODE_AUTO


def open_database(path: str) -> Any:
    """
    A reader for the MaxMind DB file at C{path}.

    @raise GeoIPError: it cannot be read or is not a MaxMind DB file.
    """
    try:
        check_regular(path)
        return maxminddb.open_database(path, _MODE)
    except FileNotFoundError:
        raise GeoIPError(f"cannot open {path!r}: no such file") from None
    except OSError as e:
        raise GeoIPError(f"cannot open {path!r}: {e.strerror or e}") from None
    except (maxminddb.InvalidDatabaseError, ValueError) as e:
        raise GeoIPError(f"{path!r} is not a MaxMind DB file ({e})") from None


class GeoIP:
    """
    Looks clients up in a country database and an ASN database, either of
    which may be missing (then every client is C{XX}, or has no ASN).
    """

    def __init__(self, country_db: Optional[str] = None, asn_db: Optional[str] = None) -> None:
        self.country_db = country_db
        self.asn_db = asn_db
        self._country = open_database(country_db) if country_db else None
        try:
            self._asn = open_database(asn_db) if asn_db else None
        except GeoIPError:
            if self._country is not None:
                self._country.close()
            raise

    @property
    def enabled(self) -> bool:
        return self._country is not None or self._asn is not None

    def country(self, ip: str) -> str:
        """
        The ISO 3166 alpha-2 code (upper case) of C{ip}'s country, or C{XX}.
        """
        reader = self._country
        if reader is None:
            return UNKNOWN_COUNTRY
        try:
            found = reader.get(ip)
        except ValueError:
            return UNKNOWN_COUNTRY
        if not isinstance(found, dict):
            return UNKNOWN_COUNTRY
        for key in ("country", "registered_country"):
            place = found.get(key)
            if isinstance(place, dict):
                code = place.get("iso_code")
                if isinstance(code, str) and len(code) == 2:
                    return code.upper()
        return UNKNOWN_COUNTRY

    def asn(self, ip: str) -> Optional[int]:
        """
        The AS number of C{ip}'s network, or L{None}.
        """
        reader = self._asn
        if reader is None:
            return None
        try:
            found = reader.get(ip)
        except ValueError:
            return None
        if not isinstance(found, dict):
            return None
        number = found.get("autonomous_system_number")
        return number if isinstance(number, int) else None

    def lookup(self, ip: str) -> Tuple[str, Optional[int]]:
        """
        (country, ASN) of C{ip}.
        """
        return self.country(ip), self.asn(ip)

    def close(self) -> None:
        for reader in (self._country, self._asn):
            if reader is not None:
                reader.close()
        self._country = self._asn = None
