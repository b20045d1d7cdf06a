"""
spectrum: a self-hosted edge proxy for any TCP or UDP protocol, built on
Twisted. C{twistd spectrum} runs it; the C{spectrum} command checks its
config and drives a running one through the admin API.
"""

#: The release, as the distribution (C{spectrum-edge}) and C{--version} give it.
__version__ = "0.1.0"


def version_line() -> str:
    """
    C{spectrum X (Twisted Y, Python Z)}: what C{--version} and the start-up
    log say.
    """
    import platform

    from twisted import __version__ as twisted_version

    return f"spectrum {__version__} (Twisted {twisted_version}, Python {platform.python_version()})"
