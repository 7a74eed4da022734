"""The connection to one libvirt daemon: opening, reconnecting, capabilities, events.

libvirt delivers events (and runs connection keepalives) only through an event
loop registered before a connection is opened. One loop serves the whole
process: `start_event_loop` registers libvirt's default implementation and
runs it in a daemon thread. Lifecycle callbacks arrive on that thread, where
calling back into libvirt is best avoided, so `Host` only queues them; a
dispatcher thread per Host resolves each into a `LifecycleEvent` and hands it
to the driver.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from drivers.errors import ConnectionLost, HypervisorUnavailable
from drivers.libvirt.guest import Guest

LOG = logging.getLogger(__name__)

# Errors that mean "the connection is broken", not "the call failed": no or an
# invalid connection, or any error of the client's RPC layer (a closed socket, a
# broken pipe...). VIR_ERR_SYSTEM_ERROR alone is not one: it is also what a
# failed open() of a disk file reports.
_CONNECTION_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})

#: How often a call waiting for a daemon that went away tries to reconnect.
RECONNECT_POLL_S = 0.5

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process)."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        # Errors are raised as libvirtError; the default handler would also print each to stderr.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(target=_run_event_loop, name="libvirt-event-loop", daemon=True)
        _loop_thread.start()


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            LOG.error("libvirt event loop iteration failed")


def _kvm_device_opens() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def _ignore_errors(call: Callable, *args) -> None:
    try:
        call(*args)
    except libvirt.libvirtError:
        pass


def is_connection_error(e: libvirt.libvirtError) -> bool:
    return e.get_error_code() in _CONNECTION_CODES or e.get_error_domain() in _CONNECTION_DOMAINS


@dataclass(frozen=True)
class HostCapabilities:
    """What the hypervisor says it can run."""

    arch: str
    #: Domain types (kvm, qemu, test...) offered for guests of the host's architecture.
    domain_types: frozenset[str]

    @classmethod
    def from_xml(cls, text: str) -> HostCapabilities:
        root = ET.fromstring(text)
        arch = root.findtext("host/cpu/arch") or ""
        types: set[str] = set()
        for guest in root.findall("guest"):
            arch_el = guest.find("arch")
            if arch_el is not None and (not arch or arch_el.get("name") == arch):
                types.update(t for d in arch_el.findall("domain") if (t := d.get("type")))
        return cls(arch, frozenset(types))


RawEvent = tuple[str, int, int]  # domain uuid, libvirt event, detail


class Host:
    """One libvirt connection, reopened when it breaks (e.g. the daemon restarted).

    `on_lifecycle(guest, event, detail)` is called, on the Host's dispatcher
    thread, for every lifecycle event of any domain on the connection.
    """

    def __init__(self, uri: str, host_name: str, on_lifecycle: Callable[[Guest, int, int], None] | None = None) -> None:
        #: The daemon's URI (also what a source daemon migrates to).
        self.uri = uri
        #: The computeflow host this connection serves: its guests' owner in their metadata.
        self.host_name = host_name
        self._on_lifecycle = on_lifecycle
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._lock = threading.RLock()
        self._events: queue.SimpleQueue[RawEvent | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._capabilities: HostCapabilities | None = None
        self._type: str | None = None
        self._closed = False
        #: Connections opened after the first one (each a daemon restart or a lost link).
        self.reconnects = 0
        #: Calls now waiting in wait_until_reachable for the daemon to answer.
        self.waiting = 0
        self._opened_before = False

    # -- connection ---------------------------------------------------------
    def get_connection(self) -> libvirt.virConnect:
        """The open connection; (re)opened when there is none or it died."""
        with self._lock:
            if self._closed:
                raise HypervisorUnavailable(self.host_name, "the driver was shut down")
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                LOG.warning("connection to %s is dead; reconnecting", self.uri)
                self._drop_connection()
            return self._open()

    def _open(self) -> libvirt.virConnect:
        start_event_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise ConnectionLost(self.host_name, f"cannot connect to {self.uri}: {e}") from None
        try:
            conn.setKeepAlive(5, 3)  # notice a dead daemon within ~20 s even when idle
        except libvirt.libvirtError:
            pass  # local drivers (test:///) have no keepalive
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass
        if self._on_lifecycle is not None:
            try:
                self._callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._queue_lifecycle_event, None
                )
            except libvirt.libvirtError as e:
                LOG.warning("no lifecycle events from %s: %s", self.uri, e)
            else:
                self._start_dispatcher()
        self._conn = conn
        if self._opened_before:
            self.reconnects += 1
            LOG.warning("reconnected to %s for host %s", self.uri, self.host_name)
        else:
            LOG.info("connected to %s for host %s", self.uri, self.host_name)
        self._opened_before = True
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        callback_id, self._callback_id = self._callback_id, None
        self._capabilities = None
        if conn is None:
            return
        # A dead connection cannot be tidied, only forgotten: ignore failures.
        if callback_id is not None:
            _ignore_errors(conn.domainEventDeregisterAny, callback_id)
        _ignore_errors(conn.unregisterCloseCallback)
        _ignore_errors(conn.close)

    def connection_failed(self) -> None:
        """A call failed with a connection error: forget the connection if it is
        dead. (A live one stays: the error was the daemon's, about a peer it
        talks to, such as a migration's destination.)"""
        with self._lock:
            conn = self._conn
            try:
                if conn is not None and conn.isAlive():
                    return
            except libvirt.libvirtError:
                pass
            self._drop_connection()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ever_connected(self) -> bool:
        """Whether a connection was ever opened (the daemon answered once)."""
        return self._opened_before

    def wait_until_reachable(self, deadline: float) -> bool:
        """After a lost connection: reconnect, trying every RECONNECT_POLL_S, until
        the daemon answers (True) or time.monotonic() passes `deadline` (False)."""
        pause = threading.Event()
        with self._lock:
            self.waiting += 1
        try:
            while True:
                try:
                    self.get_connection().getLibVersion()
                    return True
                except (ConnectionLost, libvirt.libvirtError):
                    self.connection_failed()
                if self._closed or time.monotonic() >= deadline:
                    return False
                pause.wait(min(RECONNECT_POLL_S, max(0.0, deadline - time.monotonic())))
        finally:
            with self._lock:
                self.waiting -= 1

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque) -> None:
        # On the event-loop thread. Nothing to do here: isAlive() now says the
        # connection is dead, so the next call opens a new one.
        LOG.warning("connection to %s closed (reason %d)", self.uri, reason)

    def close(self) -> None:
        """Close the connection and stop dispatching events; later calls fail."""
        with self._lock:
            self._closed = True
            self._drop_connection()
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:  # joined without the lock: it may be waiting for it
            self._events.put(None)
            dispatcher.join(timeout=10)

    # -- capabilities -------------------------------------------------------
    def capabilities(self) -> HostCapabilities:
        with self._lock:
            if self._capabilities is None:
                self._capabilities = HostCapabilities.from_xml(self.get_connection().getCapabilities())
            return self._capabilities

    def is_test_driver(self) -> bool:
        """Whether this is libvirt's in-memory test driver (test:///...)."""
        return self.hypervisor_type() == "test"

    def hypervisor_type(self) -> str:
        """'qemu', 'test'... (lower case), as the connection reports it."""
        with self._lock:
            if self._type is None:
                self._type = self.get_connection().getType().lower()
            return self._type

    def is_local(self) -> bool:
        """Whether the daemon runs on this machine (no host name in the URI)."""
        return "://" in self.uri and self.uri.split("://", 1)[1].startswith("/")

    def domain_type(self, requested: str) -> str:
        """The <domain type> to define guests with for `[libvirt] virt_type`.

        The test driver runs only type 'test'. Otherwise the requested type
        must be one the hypervisor offers for the host's architecture, and
        'kvm' on a local daemon also needs a /dev/kvm that opens. That is all
        that can be checked cheaply, and it is not proof: where /dev/kvm is a
        paravirtual device (some cloud machines), libvirt offers kvm, the
        device opens, and guests still hang at boot. Hence the default 'qemu'.
        """
        if self.is_test_driver():
            return "test"
        offered = self.capabilities().domain_types
        if requested not in offered:
            raise HypervisorUnavailable(
                self.host_name,
                f"virt_type {requested!r} is not offered by {self.uri} "
                f"(offered: {', '.join(sorted(offered)) or 'none'})",
            )
        if requested == "kvm" and self.is_local() and not _kvm_device_opens():
            raise HypervisorUnavailable(
                self.host_name, "virt_type 'kvm' but /dev/kvm cannot be opened; set [libvirt] virt_type = qemu"
            )
        return requested

    # -- domains ------------------------------------------------------------
    def find_guest(self, uuid: str) -> Guest | None:
        try:
            return Guest(self.get_connection().lookupByUUIDString(uuid))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def find_owned_guest(self, uuid: str) -> Guest | None:
        """The guest of instance `uuid` if computeflow host `host_name` owns it;
        None if there is none, it is not ours, or it vanished as we looked."""
        guest = self.find_guest(uuid)
        try:
            return guest if guest is not None and guest.owned_by(self.host_name) else None
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return None  # gone since found (a migration that just completed, say)

    def define_guest(self, xml: str) -> Guest:
        return Guest(self.get_connection().defineXML(xml))

    def list_guests(self) -> list[Guest]:
        return [Guest(d) for d in self.get_connection().listAllDomains(0)]

    def network_is_active(self, name: str) -> bool:
        """Whether a libvirt network of that name exists and runs."""
        try:
            return bool(self.get_connection().networkLookupByName(name).isActive())
        except libvirt.libvirtError as e:
            if e.get_error_code() in (libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_SUPPORT):
                return False
            raise

    def resources(self) -> tuple[int, int, str, int]:
        """(logical CPUs, memory MiB, hypervisor type, hypervisor version)."""
        conn = self.get_connection()
        info = conn.getInfo()
        return info[2], info[1], self.hypervisor_type(), conn.getVersion()

    # -- events -------------------------------------------------------------
    def _queue_lifecycle_event(self, _conn, dom: libvirt.virDomain, event: int, detail: int, _opaque) -> None:
        # Runs on the event-loop thread: no calls into libvirt that need the daemon.
        try:
            self._events.put((dom.UUIDString(), event, detail))
        except Exception:  # an exception here would be printed by libvirt and lost
            LOG.exception("could not queue a libvirt event")

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_events, name=f"libvirt-events-{self.host_name}", daemon=True
            )
            self._dispatcher.start()

    def _dispatch_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            uuid, event, detail = item
            if self._closed:
                continue  # drain what was queued before close(), up to its sentinel
            try:
                guest = self.find_guest(uuid)
                if guest is not None and self._on_lifecycle is not None:
                    self._on_lifecycle(guest, event, detail)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # else: gone meanwhile
                    LOG.warning("libvirt event %d/%d of domain %s: %s", event, detail, uuid, e)
            except HypervisorUnavailable as e:
                if not self._closed:
                    LOG.warning("libvirt event %d/%d of domain %s: %s", event, detail, uuid, e)
            except Exception:
                LOG.exception("handling libvirt event %d/%d of domain %s failed", event, detail, uuid)
