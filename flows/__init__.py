"""Operations as taskflow graphs of small reversible steps."""

from oslo_config import cfg

from flows import options


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for oslo-config-generator."""
    return [("DEFAULT", options.flow_opts)]
