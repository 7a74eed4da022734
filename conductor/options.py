"""Conductor options: where state lives and how operations are owned."""

import os

from oslo_config import cfg

from flows.options import step_opts

default_opts = [
    cfg.StrOpt(
        "state_path",
        default=os.path.expanduser("~/.local/state/computeflow"),
        sample_default="~/.local/state/computeflow",
        help="Top directory for computeflow's local state: the embedded SQLite "
        "database, the fake driver's hosts, the secret key and the log.",
    ),
]

conductor_opts = [
    cfg.StrOpt(
        "name",
        help="Name of this conductor; default: hostname:pid:process-start.",
    ),
    cfg.IntOpt(
        "lease_seconds",
        default=30,
        min=2,
        help="An operation whose owner has not renewed its lease for this long may be taken over by another conductor.",
    ),
    cfg.IntOpt(
        "workers",
        default=2000,
        min=1,
        help="Most threads running steps at once, shared by all running flows. "
        "A step waiting for the hypervisor holds its thread, so this bounds how "
        "many operations wait at once (about one thread each, a few for a flow's "
        "parallel section). Threads are started on demand and end after "
        "idle_thread_seconds without work; a step finding all busy waits its "
        "turn, oldest first.",
    ),
    cfg.FloatOpt(
        "idle_thread_seconds",
        default=5.0,
        min=0.1,
        help="Seconds an idle step or operation thread lives before it ends, so that memory returns after a burst.",
    ),
    cfg.FloatOpt(
        "recycle_rss_growth",
        default=10.0,
        min=0.0,
        help="Percent. When a `computeflow conductor` process, idle after a burst "
        "and having returned its free memory, still holds this much more "
        "resident memory than at its first idle moment, it restarts itself in "
        "place: nothing is in flight, the pid and owner identity stay, and the "
        "memory the allocator could not return (pages pinned by a few small "
        "survivors, not a leak) goes back to the system. 0: never.",
    ),
    cfg.BoolOpt(
        "auto_upgrade",
        default=True,
        help="Upgrade the database schema on start when it is SQLite (the "
        "embedded mode). Server databases are upgraded only by "
        "`computeflow db upgrade`.",
    ),
    cfg.IntOpt(
        "reconcile_interval",
        default=600,
        min=0,
        help="Seconds between two audits of the hosts against the database by "
        "`computeflow conductor` (as Nova's power-state sync); 0: never. New "
        "findings are logged and recorded as instance events.",
    ),
    cfg.ListOpt(
        "reconcile_apply",
        default=[],
        help="Finding kinds whose fix `computeflow conductor` carries out by "
        "itself after an audit (e.g. power-drift,orphan-guest,stale-claim); "
        "empty: report only. See docs/reconcile.md for the kinds.",
    ),
    cfg.DictOpt(
        "resume_direction",
        default={},
        help="Per operation kind, what a resume does with an operation interrupted "
        "going forward when the hypervisor does not show the interrupted step "
        "done: forward (run it again, go on) or revert (undo what was done), "
        "e.g. spawn:revert. Kinds not named keep the catalogue's default "
        "(forward). A flow already reverting, or forward-only past its hold, "
        "has one direction only.",
    ),
    cfg.StrOpt(
        "log_file",
        default="$state_path/computeflow.log",
        help="Log file of every computeflow command.",
    ),
]

# Read by conductor/boards/ and conductor/service.py.
jobboard_opts = [
    cfg.StrOpt(
        "jobboard",
        default="",
        sample_default="",
        help="Jobboard URL for scale-out conductors: redis://HOST:PORT[?namespace=NS] "
        "(the scale-out default, e.g. redis://127.0.0.1:6379), zookeeper://HOST:PORT or "
        "etcd://HOST:PORT (through taskflow's backends, when their client library is "
        "installed). Empty: the embedded mode, no server; submissions run in the "
        "submitting process and `computeflow conductor` works from the database.",
    ),
    cfg.IntOpt(
        "claim_expiry",
        default=30,
        min=2,
        help="Seconds a conductor's claim on a job lives without a heartbeat; a dead "
        "conductor's operations are taken over after about this long.",
    ),
    cfg.IntOpt(
        "max_operations",
        default=1000,
        min=1,
        help="Operations one `computeflow conductor` runs at the same time (each "
        "on its own thread, started on demand). Operations mostly wait for the "
        "hypervisor, so this is well above the core count; lower it to spread "
        "CPU-bound bursts over several conductors sooner.",
    ),
    cfg.FloatOpt(
        "admission_lag_ms",
        default=20.0,
        min=0,
        help="While it runs operations, a conductor claims more only when a 1 ms "
        "sleep of its own returns less than this late: the lateness grows with the "
        "step work ready to run in the process, so a burst waits on the jobboard "
        "instead of slowing every operation already in flight "
        "(conductor/admission.py). 0: claim whenever there is room.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.5,
        min=0.01,
        help="Seconds an idle conductor (and `wait()`) waits before looking again "
        "when no wake-up notifier covers it: SQLite shared by several processes, "
        "MySQL without a Redis jobboard, `wakeups = false`, or a notifier "
        "reconnecting.",
    ),
    cfg.BoolOpt(
        "wakeups",
        default=True,
        help="Learn of new jobs and ended operations from notifications instead "
        "of polling: PostgreSQL LISTEN/NOTIFY, Redis pub/sub, ZooKeeper and etcd "
        "watches, and within one process. false: poll every poll_interval (e.g. "
        "behind a PgBouncer in transaction mode, where LISTEN does not work).",
    ),
    cfg.FloatOpt(
        "safety_poll_interval",
        default=5.0,
        min=0.1,
        help="Seconds between two looks while a wake-up notifier is connected: "
        "the safety net for a lost notification and for what nobody announces "
        "(a dead owner's lease running out).",
    ),
]

# Read by conductor/moves.py (auto-confirm of resizes).
moves_opts = [
    cfg.IntOpt(
        "resize_confirm_window",
        default=0,
        min=0,
        help="Seconds after which a resize or migration still waiting in "
        "RESIZED is confirmed automatically, by `computeflow resume` (each "
        "conductor pass) and `computeflow ops auto-confirm`. 0: never.",
    ),
]

# Read by conductor/host_limits.py (per-host slots, persistence/host_slots.py).
host_limit_opts = [
    cfg.IntOpt(
        "max_concurrent_builds",
        default=10,
        min=0,
        help="Operations that build an instance on a host (spawn, rebuild, and "
        "evacuate on its destination) running at once on one host, counted "
        "across every conductor sharing the database. More wait in line, in "
        "submission order, and start as slots free up (never fail). 0: unlimited.",
    ),
    cfg.IntOpt(
        "max_concurrent_live_migrations",
        default=1,
        min=0,
        help="Live migrations running at once that involve one host, as source "
        "or destination, across every conductor; a migration needs a slot on "
        "both hosts. More wait in line, in submission order. 0: unlimited.",
    ),
    cfg.DictOpt(
        "max_concurrent_per_host",
        default={},
        help="Per operation kind, at most this many at once on one host (on "
        "every host it names: both ends of a move), e.g. snapshot:2,migrate:1; "
        "on top of the two limits above. More wait in line. 0: unlimited.",
    ),
]

conductor_opts += jobboard_opts
conductor_opts += host_limit_opts
conductor_opts += step_opts  # read by flows/steps/attempts.py (every step's deadline and retries)
conductor_opts += moves_opts


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(default_opts)
    conf.register_opts(conductor_opts, group="conductor")
