"""
The C{twistd spectrum} plugin: one lazy object, nothing imported until used.
"""

from twisted.application.service import ServiceMaker

spectrum = ServiceMaker(
    "spectrum",
    "spectrum.tap",
    "An edge proxy for any TCP or UDP protocol.",
    "spectrum",
)
