"""
Errors that cross the layers: raised by the service, caught by the admin
API, the cluster and the start, none of which need import the service for
them.
"""

from __future__ import annotations


class ListenError(Exception):
    """
    An edge address and port could not be bound; C{str()} is one line that
    names the app and the address.
    """
