"""etc/computeflow.conf.sample is generated from the code and must be current."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_sample_config_is_current(tmp_path):
    out = tmp_path / "sample.conf"
    subprocess.run(
        [
            Path(sys.executable).parent / "oslo-config-generator",
            "--config-file",
            "etc/oslo-config-generator/computeflow.conf",
            "--output-file",
            str(out),
        ],
        cwd=REPO,
        check=True,
    )
    assert out.read_text() == (REPO / "etc/computeflow.conf.sample").read_text(), "regenerate it: make sample-config"


def test_every_package_exposes_its_options():
    import conductor
    import drivers
    import flows
    import persistence
    import web

    groups = {g for pkg in (conductor, drivers, flows, persistence, web) for g, _ in pkg.list_opts()}
    assert {"DEFAULT", "database", "conductor", "fake", "web"} <= groups
    names = {o.name for pkg in (drivers, flows) for _, opts in pkg.list_opts() for o in opts}
    assert {
        "compute_driver",
        "use_cow_images",
        "preallocate_images",
        "vif_plugging_timeout",
        "vif_plugging_is_fatal",
        "default_ephemeral_format",
    } <= names


def _packages_loaded_by(module: str, packages: set[str]) -> list[str]:
    """Which of `packages` a fresh interpreter has loaded after importing `module`."""
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {packages!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout)


def test_options_import_no_client_library():
    """Options are collected without importing what reads them: a light
    `import conductor.ownership` pulls in no jobboard client and no taskflow."""
    assert _packages_loaded_by("conductor.ownership", {"redis", "kazoo", "etcd3gw", "taskflow", "sqlalchemy"}) == []


def test_a_cli_command_starts_without_jobboard_clients_or_alembic():
    """Every CLI call imports conductor.cli: the jobboard client libraries
    load with their board, alembic only to upgrade the schema (together
    ~0.25 s of each command's start, paid thousands of times by the tests)."""
    loaded = _packages_loaded_by("conductor.cli", {"redis", "kazoo", "etcd3gw", "alembic", "mako", "pygments"})
    assert loaded == []
