"""One libvirt domain, with methods named for what they do to the guest.

`Guest` wraps a virDomain and speaks computeflow's vocabulary (PowerState,
GuestInfo); it does not decide policy (whether an action is allowed in a given
state, how long to wait): that is the driver's job.
"""

from __future__ import annotations

import libvirt

from drivers.base import GuestInfo, PowerState
from drivers.libvirt.config import METADATA_NS, ConfigError, DomainConfig, InstanceMetadata

# Undefine flags from the most to the least complete; a driver that refuses a
# flag (the test driver knows no NVRAM) is asked again without it.
_UNDEFINE_FLAG_SETS = (
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    0,
)
_UNSUPPORTED = frozenset(
    {libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED}
)


class Guest:
    def __init__(self, domain: libvirt.virDomain) -> None:
        self._domain = domain

    @property
    def uuid(self) -> str:
        return self._domain.UUIDString()

    @property
    def name(self) -> str:
        return self._domain.name()

    @property
    def domain(self) -> libvirt.virDomain:
        """The virDomain itself, for the calls this class does not wrap
        (a live migration's job: migration.py)."""
        return self._domain

    def __repr__(self) -> str:
        return f"Guest({self.name}, {self.uuid})"

    # -- what it is ---------------------------------------------------------
    def config(self) -> DomainConfig:
        """The persistent definition, parsed."""
        return DomainConfig.from_xml(self.definition_xml())

    def definition_xml(self) -> str:
        """The persistent definition as libvirt holds it (to define it again later)."""
        return self._domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def instance_metadata(self) -> InstanceMetadata | None:
        """computeflow's metadata element, or None for a domain computeflow did not define."""
        try:
            text = self._domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise
        try:
            return InstanceMetadata.from_xml(text)
        except ConfigError:
            return None

    def owned_by(self, host: str) -> bool:
        """Whether computeflow's metadata names `host` as the guest's owner
        (several computeflow hosts may share one daemon)."""
        meta = self.instance_metadata()
        return meta is not None and meta.host == host

    def is_active(self) -> bool:
        return bool(self._domain.isActive())

    def has_managed_save(self) -> bool:
        return bool(self._domain.hasManagedSaveImage(0))

    def power_state(self) -> PowerState:
        state, reason = self._domain.state()
        return _power_state(state, reason, lambda: self.has_managed_save())

    def info(self) -> GuestInfo:
        state, _max_mem, mem_kib, vcpus, cpu_time = self._domain.info()
        _, reason = self._domain.state()
        return GuestInfo(_power_state(state, reason, self.has_managed_save), vcpus, mem_kib // 1024, cpu_time)

    # -- what it does -------------------------------------------------------
    def launch(self) -> None:
        """Start it (from its managed-save image when it has one)."""
        self._domain.create()

    def shutdown(self) -> None:
        """Ask the guest OS to power off (ACPI power button); returns at once."""
        self._domain.shutdown()

    def poweroff(self) -> None:
        """Stop it at once, as pulling the plug would."""
        try:
            self._domain.destroy()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or self.is_active():
                raise  # only "it is not running" (e.g. it stopped meanwhile) is fine

    def pause(self) -> None:
        """Stop its vCPUs; memory stays in the host's RAM."""
        self._domain.suspend()

    def unpause(self) -> None:
        self._domain.resume()

    def save_to_host(self) -> None:
        """Write its memory to the daemon's managed-save file and stop it."""
        self._domain.managedSave(0)

    def discard_saved_state(self) -> None:
        """Drop the managed-save image: the next launch boots afresh."""
        if self.has_managed_save():
            self._domain.managedSaveRemove(0)

    def undefine(self) -> None:
        """Remove the definition, with its snapshot metadata, managed-save
        image and NVRAM as far as the hypervisor supports those flags."""
        for flags in _UNDEFINE_FLAG_SETS:
            try:
                self._domain.undefineFlags(flags)
                return
            except libvirt.libvirtError as e:
                if e.get_error_code() not in _UNSUPPORTED or flags == 0:
                    raise


def _power_state(state: int, reason: int, has_managed_save) -> PowerState:
    if state in (
        libvirt.VIR_DOMAIN_RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED,
        libvirt.VIR_DOMAIN_SHUTDOWN,
    ):  # SHUTDOWN: still running, on its way down
        return PowerState.RUNNING
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return PowerState.PAUSED
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
            return PowerState.CRASHED
        return PowerState.SUSPENDED if has_managed_save() else PowerState.SHUTDOWN
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return PowerState.CRASHED
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return PowerState.SUSPENDED
    return PowerState.NOSTATE
