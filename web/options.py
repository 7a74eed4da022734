"""Options of the web dashboard and REST API ([web]); imports nothing heavy."""

from oslo_config import cfg

web_opts = [
    cfg.ListOpt(
        "tokens",
        default=[],
        secret=True,
        help="Who may use `computeflow serve`: a list of ROLE:SHA256HEX entries, "
        "ROLE one of reader, operator, admin (each role may do what the ones "
        "before it may), SHA256HEX the SHA-256 of the token in hex (the token "
        "itself is never stored). Hash one with `computeflow serve "
        "--hash-token < token.txt`. Empty: every request is refused (401).",
    ),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(web_opts, group="web")
