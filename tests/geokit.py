"""
Small MaxMind DB files for tests, written with mmdb-writer in the shapes of
GeoLite2-Country and GeoLite2-ASN, read back by the real maxminddb reader.
"""

from __future__ import annotations

from typing import Dict, Tuple

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_country_db(path: str, networks: Dict[str, str]) -> str:
    """
    A GeoLite2-Country-shaped database: each network maps to an ISO code.
    """
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    for network, code in networks.items():
        writer.insert_network(
            IPSet([network]),
            {"country": {"iso_code": code, "names": {"en": code}}, "registered_country": {"iso_code": code}},
        )
    writer.to_db_file(path)
    return path


def write_asn_db(path: str, networks: Dict[str, Tuple[int, str]]) -> str:
    """
    A GeoLite2-ASN-shaped database: each network maps to (number, organization).
    """
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN", int_type="u32")
    for network, (number, org) in networks.items():
        writer.insert_network(
            IPSet([network]),
            {"autonomous_system_number": number, "autonomous_system_organization": org},
        )
    writer.to_db_file(path)
    return path
