"""The face of computeflow: submission, running, resuming and the CLI."""

from conductor import options


def list_opts():
    """Options for oslo-config-generator."""
    return [("DEFAULT", options.default_opts), ("conductor", options.conductor_opts)]
