"""The web face of computeflow: a JSON REST API under /api/v1 and a small
dashboard, served by `computeflow serve` from the CLI's database.

web -> conductor -> flows -> drivers; nothing below imports this package.
"""

from web import options


def list_opts():
    """Options for oslo-config-generator."""
    return [("web", options.web_opts)]
