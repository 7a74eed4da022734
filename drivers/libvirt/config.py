"""Domain XML as small dataclasses that render to and parse from libvirt's format.

Only what computeflow defines is modelled: the domain's identity and size, how
it boots, its disks, interfaces and serial console, and computeflow's own
metadata element (which marks a domain as ours). Parsing ignores everything
else, so a domain read back from libvirt (which adds defaults, aliases and PCI
addresses) parses into the same objects that were rendered.

There is deliberately no <graphics> element: the guests are headless and the
console is a file.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from computeflow.errors import ComputeflowError

#: The namespace of computeflow's <metadata> element.
METADATA_NS = "http://computeflow.invalid/xmlns/libvirt/instance/1.0"
METADATA_PREFIX = "computeflow"


def _xml(el: ET.Element) -> str:
    """Render with our metadata prefix (ElementTree's prefix table is process-wide:
    set when first rendering, not as a side effect of importing this module)."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    return ET.tostring(el, encoding="unicode")


_MEMORY_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}


class ConfigError(ComputeflowError, ValueError):
    """The XML does not describe a domain we can read."""


@dataclass(frozen=True)
class InstanceMetadata:
    """computeflow's mark on a domain: which instance it is and which host owns it."""

    instance_name: str
    host: str
    flavor: str = ""

    def to_element(self) -> ET.Element:
        root = ET.Element(f"{{{METADATA_NS}}}instance")
        for tag, value in (("name", self.instance_name), ("host", self.host), ("flavor", self.flavor)):
            ET.SubElement(root, f"{{{METADATA_NS}}}{tag}").text = value
        return root

    def to_xml(self) -> str:
        return _xml(self.to_element())

    @classmethod
    def from_element(cls, el: ET.Element) -> InstanceMetadata:
        values = {_local(child.tag): (child.text or "") for child in el}
        if "name" not in values or "host" not in values:
            raise ConfigError("computeflow metadata without name or host")
        return cls(values["name"], values["host"], values.get("flavor", ""))

    @classmethod
    def from_xml(cls, text: str) -> InstanceMetadata:
        """Parse the element, namespaced (as in the domain XML) or not (as
        virDomainGetMetadata returns it)."""
        return cls.from_element(_parse(text))


@dataclass(frozen=True)
class OsConfig:
    """How the guest boots: from its first disk, or directly from a kernel."""

    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    #: 'hd' to boot from the first disk; None with a kernel.
    boot_dev: str | None = None

    def to_element(self) -> ET.Element:
        os_el = ET.Element("os")
        type_el = ET.SubElement(os_el, "type")
        type_el.text = self.type
        if self.arch:
            type_el.set("arch", self.arch)
        if self.machine:
            type_el.set("machine", self.machine)
        for tag in ("kernel", "initrd", "cmdline"):
            value = getattr(self, tag)
            if value is not None:
                ET.SubElement(os_el, tag).text = value
        if self.boot_dev:
            ET.SubElement(os_el, "boot", dev=self.boot_dev)
        return os_el

    @classmethod
    def from_element(cls, el: ET.Element) -> OsConfig:
        type_el = el.find("type")
        boot = el.find("boot")
        return cls(
            type=(type_el.text or "hvm") if type_el is not None else "hvm",
            arch=type_el.get("arch") if type_el is not None else None,
            machine=type_el.get("machine") if type_el is not None else None,
            kernel=el.findtext("kernel"),
            initrd=el.findtext("initrd"),
            cmdline=el.findtext("cmdline"),
            boot_dev=boot.get("dev") if boot is not None else None,
        )


@dataclass(frozen=True)
class DiskConfig:
    """A file-backed disk."""

    source: str
    target_dev: str
    format: str = "qcow2"
    bus: str = "virtio"
    device: str = "disk"

    def to_element(self) -> ET.Element:
        disk = ET.Element("disk", type="file", device=self.device)
        ET.SubElement(disk, "driver", name="qemu", type=self.format)
        ET.SubElement(disk, "source", file=self.source)
        ET.SubElement(disk, "target", dev=self.target_dev, bus=self.bus)
        return disk

    @classmethod
    def from_element(cls, el: ET.Element) -> DiskConfig | None:
        source, target = el.find("source"), el.find("target")
        if el.get("type") != "file" or source is None or target is None or not source.get("file"):
            return None  # not a kind of disk computeflow defines
        driver = el.find("driver")
        return cls(
            source=source.get("file", ""),
            target_dev=target.get("dev", ""),
            format=(driver.get("type") if driver is not None else None) or "raw",
            bus=target.get("bus", "virtio"),
            device=el.get("device", "disk"),
        )


@dataclass(frozen=True)
class InterfaceConfig:
    """A NIC on a libvirt network (type='network') or on a tap device
    libvirt creates and removes with the guest (type='ethernet')."""

    type: str
    mac: str
    network: str | None = None
    target_dev: str | None = None
    model: str = "virtio"

    def __post_init__(self) -> None:
        if self.type not in ("network", "ethernet"):
            raise ConfigError(f"interface type {self.type!r}: only network and ethernet are modelled")
        if self.type == "network" and not self.network:
            raise ConfigError("a network interface needs a network name")

    def to_element(self) -> ET.Element:
        nic = ET.Element("interface", type=self.type)
        ET.SubElement(nic, "mac", address=self.mac)
        if self.type == "network":
            ET.SubElement(nic, "source", network=self.network or "")  # set: __post_init__
        if self.target_dev:
            ET.SubElement(nic, "target", dev=self.target_dev)
        ET.SubElement(nic, "model", type=self.model)
        return nic

    @classmethod
    def from_element(cls, el: ET.Element) -> InterfaceConfig | None:
        kind = el.get("type")
        mac, source = el.find("mac"), el.find("source")
        target, model = el.find("target"), el.find("model")
        if kind not in ("network", "ethernet") or mac is None:
            return None
        return cls(
            type=kind,
            mac=mac.get("address", ""),
            network=source.get("network") if kind == "network" and source is not None else None,
            target_dev=target.get("dev") if target is not None else None,
            model=(model.get("type") if model is not None else None) or "virtio",
        )


@dataclass(frozen=True)
class SerialConfig:
    """The first serial port, written to a file that survives guest restarts."""

    path: str
    append: bool = True

    def to_element(self) -> ET.Element:
        serial = ET.Element("serial", type="file")
        source = ET.SubElement(serial, "source", path=self.path)
        if self.append:
            source.set("append", "on")
        ET.SubElement(serial, "target", port="0")
        return serial

    @classmethod
    def from_element(cls, el: ET.Element) -> SerialConfig | None:
        source = el.find("source")
        if el.get("type") != "file" or source is None or not source.get("path"):
            return None
        return cls(path=source.get("path", ""), append=source.get("append") == "on")


@dataclass(frozen=True)
class DomainConfig:
    """One domain: what define_guest renders and what a domain's XML parses into."""

    type: str
    name: str
    uuid: str
    memory_mb: int
    vcpus: int
    os: OsConfig = field(default_factory=OsConfig)
    title: str | None = None
    acpi: bool = True
    apic: bool = True
    disks: tuple[DiskConfig, ...] = ()
    interfaces: tuple[InterfaceConfig, ...] = ()
    serial: SerialConfig | None = None
    metadata: InstanceMetadata | None = None

    def to_element(self) -> ET.Element:
        dom = ET.Element("domain", type=self.type)
        ET.SubElement(dom, "name").text = self.name
        ET.SubElement(dom, "uuid").text = self.uuid
        if self.title:
            ET.SubElement(dom, "title").text = self.title
        if self.metadata is not None:
            ET.SubElement(dom, "metadata").append(self.metadata.to_element())
        ET.SubElement(dom, "memory", unit="MiB").text = str(self.memory_mb)
        ET.SubElement(dom, "vcpu").text = str(self.vcpus)
        dom.append(self.os.to_element())
        if self.acpi or self.apic:
            features = ET.SubElement(dom, "features")
            if self.acpi:
                ET.SubElement(features, "acpi")
            if self.apic:
                ET.SubElement(features, "apic")
        devices = ET.SubElement(dom, "devices")
        for disk in self.disks:
            devices.append(disk.to_element())
        for nic in self.interfaces:
            devices.append(nic.to_element())
        if self.serial is not None:
            devices.append(self.serial.to_element())
        return dom

    def to_xml(self) -> str:
        el = self.to_element()
        ET.indent(el)
        return _xml(el)

    @classmethod
    def from_xml(cls, text: str) -> DomainConfig:
        root = _parse(text)
        if root.tag != "domain":
            raise ConfigError(f"expected a <domain>, got <{root.tag}>")
        name, uuid = root.findtext("name"), root.findtext("uuid")
        if not name or not uuid:
            raise ConfigError("a domain needs a name and a uuid")
        memory = root.find("memory")
        if memory is None or not (memory.text or "").strip():
            raise ConfigError(f"domain {name} has no memory size")
        vcpu = root.findtext("vcpu")
        os_el = root.find("os")
        features = root.find("features")
        devices = root.find("devices")
        devices = devices if devices is not None else ET.Element("devices")
        meta = None
        meta_el = root.find("metadata")
        if meta_el is not None:
            ours = meta_el.find(f"{{{METADATA_NS}}}instance")
            meta = InstanceMetadata.from_element(ours) if ours is not None else None
        serials = [s for s in (SerialConfig.from_element(e) for e in devices.findall("serial")) if s]
        return cls(
            type=root.get("type", ""),
            name=name,
            uuid=uuid,
            memory_mb=_to_bytes(memory.text or "0", memory.get("unit", "KiB")) // 1024**2,
            vcpus=int(vcpu) if vcpu else 1,
            os=OsConfig.from_element(os_el) if os_el is not None else OsConfig(),
            title=root.findtext("title"),
            acpi=features is not None and features.find("acpi") is not None,
            apic=features is not None and features.find("apic") is not None,
            disks=tuple(d for d in (DiskConfig.from_element(e) for e in devices.findall("disk")) if d),
            interfaces=tuple(i for i in (InterfaceConfig.from_element(e) for e in devices.findall("interface")) if i),
            serial=serials[0] if serials else None,
            metadata=meta,
        )

    def replace(self, **changes) -> DomainConfig:
        return dataclasses.replace(self, **changes)


def _parse(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise ConfigError(f"malformed XML: {e}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _to_bytes(value: str, unit: str) -> int:
    try:
        return int(value.strip()) * _MEMORY_UNITS[unit.lower()]
    except (KeyError, ValueError):
        raise ConfigError(f"memory {value!r} {unit!r} is not a size libvirt writes") from None
