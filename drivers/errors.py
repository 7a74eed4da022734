"""Errors a hypervisor driver raises; flows decide what each means."""

from computeflow.errors import ComputeflowError


class DriverError(ComputeflowError):
    """Base class. `transient` errors may succeed if the step is retried."""

    transient = False


class TransientError(DriverError):
    """An error that may go away if the same call is made again (a hypervisor
    reconnecting, a lock held for a moment): steps retry it with backoff."""

    transient = True


class NotSupported(DriverError):
    def __init__(self, driver: str, method: str) -> None:
        super().__init__(f"the {driver} driver does not support {method}")
        self.driver = driver
        self.method = method


class GuestNotFound(DriverError):
    def __init__(self, instance_uuid: str) -> None:
        super().__init__(f"no guest for instance {instance_uuid} on this host")
        self.instance_uuid = instance_uuid


class InvalidGuestState(DriverError):
    def __init__(self, instance_uuid: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} instance {instance_uuid}: guest is {state}")
        self.instance_uuid = instance_uuid
        self.state = state


class ImageNotFound(DriverError):
    def __init__(self, image: str) -> None:
        super().__init__(f"image {image!r} is not available to this host")
        self.image = image


class HypervisorUnavailable(TransientError):
    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"hypervisor on host {host} is unavailable: {reason}")
        self.host = host


class ConnectionLost(HypervisorUnavailable):
    """The connection to the hypervisor broke, or could not be opened (its daemon
    is down or restarting). The libvirt driver waits for the daemon and repeats
    the call itself ([libvirt] reconnect_timeout) before raising this."""


class InjectedFault(DriverError):
    """Raised by fault injection (tests and demos)."""

    def __init__(self, step: str, phase: str) -> None:
        super().__init__(f"injected failure at step {step} during {phase}")
        self.step = step
        self.phase = phase


class InjectedTransientFault(TransientError):
    """Raised by fault injection: a failure that a retry gets past."""

    def __init__(self, step: str, phase: str, remaining: int) -> None:
        super().__init__(f"injected transient failure at step {step} during {phase} ({remaining} more to come)")
        self.step = step
        self.phase = phase


class SoftRebootFailed(DriverError):
    """The guest did not restart when asked nicely; a hard reboot may follow."""

    def __init__(self, instance_uuid: str, reason: str) -> None:
        super().__init__(f"soft reboot of {instance_uuid} failed: {reason}")
        self.instance_uuid = instance_uuid


class VolumeInUse(DriverError):
    def __init__(self, volume_id: str, holder: str) -> None:
        super().__init__(f"volume {volume_id} is attached to instance {holder}")
        self.volume_id = volume_id
        self.holder = holder


class RootDiskTooSmall(InvalidGuestState):
    """The flavor's root disk cannot hold the image. An InvalidGuestState so
    that callers catching that keep working; named so that a user sees why."""

    def __init__(self, instance_uuid: str, root_mb: int, image: str, image_mb: int) -> None:
        DriverError.__init__(
            self,
            f"cannot create the root disk of {instance_uuid}: the flavor's "
            f"{root_mb} MB root disk is smaller than image {image} ({image_mb} MB)",
        )
        self.instance_uuid = instance_uuid
        self.state = "root disk too small"
        self.root_mb = root_mb
        self.image = image
        self.image_mb = image_mb


class DiskCannotShrink(DriverError):
    """A resize to a flavor whose disk is smaller than the instance's: refused
    before the guest is touched, since a filesystem cannot be cut blindly."""

    def __init__(self, instance_uuid: str, disk: str, have_mb: int, want_mb: int) -> None:
        super().__init__(
            f"cannot resize instance {instance_uuid}: its {disk} disk is {have_mb} MB "
            f"and the new flavor's is {want_mb} MB (disks never shrink)"
        )
        self.instance_uuid = instance_uuid
        self.disk = disk
        self.have_mb = have_mb
        self.want_mb = want_mb
