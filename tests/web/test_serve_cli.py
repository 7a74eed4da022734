"""`computeflow serve`'s command line: hashing a token, and a bad [web]
tokens entry refused at start (exit 2, one line), before anything is bound."""

from __future__ import annotations

import hashlib

from tests.conftest import run_cli, write_conf


def test_hash_token_reads_stdin(tmp_path):
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", f"sqlite:///{tmp_path}/db.sqlite")
    res = run_cli(conf, "serve", "--hash-token", stdin="s3cret-token\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == hashlib.sha256(b"s3cret-token").hexdigest() + "\n"
    res = run_cli(conf, "serve", "--hash-token", stdin="")
    assert res.returncode == 2 and "no token" in res.stderr


def test_malformed_token_entry_is_one_line_exit_2(tmp_path):
    conf = write_conf(
        tmp_path / "c.conf", tmp_path / "state", f"sqlite:///{tmp_path}/db.sqlite", "[web]\ntokens = superuser:abc\n"
    )
    res = run_cli(conf, "serve", "--port", "1", timeout=30)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "ROLE:SHA256HEX" in res.stderr
    assert "serving" not in res.stdout
