"""Errors a hypervisor driver raises; flows decide what each means."""


class DriverError(Exception):
    """Base class. `transient` errors may succeed if the step is retried."""

    transient = False


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


class HypervisorUnavailable(DriverError):
    transient = True

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"hypervisor on host {host} is unavailable: {reason}")
        self.host = host


class InjectedFault(DriverError):
    """Raised by fault injection (tests and demos)."""

    def __init__(self, step: str, phase: str) -> None:
        super().__init__(f"injected failure at step {step} during {phase}")
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
