"""Operations as taskflow graphs of small reversible steps."""
from flows import options


def list_opts():
    """Options for oslo-config-generator."""
    return [("DEFAULT", options.flow_opts)]
