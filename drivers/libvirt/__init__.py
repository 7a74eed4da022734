"""The libvirt driver, split by concept:

    host.py    the connection to one daemon: reconnects, capabilities, the event loop
    guest.py   Guest: one domain, with methods named for what they do
    config.py  domain XML as dataclasses that render and parse
    disks.py   base-image cache and instance disks (qemu-img)
    ports.py   the port records of a host
    layout.py  where a host keeps an instance's files
    driver.py  LibvirtDriver, the ComputeDriver contract built from the above

Importing this package does not import libvirt-python; its modules do.
"""
