"""Driver options: the seed contract's options plus the fake and libvirt drivers' own."""

from oslo_config import cfg

driver_opts = [
    cfg.StrOpt(
        "compute_driver",
        default="fake",
        choices=[("fake", "on-disk fake hypervisor"), ("libvirt", "libvirt-python")],
        help="Driver given to hosts added without an explicit --driver.",
    ),
    cfg.StrOpt(
        "default_ephemeral_format",
        help="Filesystem an ephemeral disk is formatted with when it is created "
        "(e.g. ext4). Unset: the driver's own default.",
    ),
    cfg.StrOpt(
        "preallocate_images",
        default="none",
        choices=[
            ("none", "allocate storage as the guest writes"),
            ("space", "allocate every disk's full size when it is created"),
        ],
        help="Storage preallocation for instance disks.",
    ),
    cfg.BoolOpt(
        "use_cow_images",
        default=True,
        help="Create root disks as copy-on-write overlays over a cached base image instead of full copies.",
    ),
]

fake_opts = [
    cfg.StrOpt(
        "state_dir",
        default="$state_path/fake",
        help="Where the fake driver keeps each host's hypervisor state.",
    ),
    cfg.ListOpt(
        "faults",
        default=[],
        help="Faults to inject, each STEP:PHASE:ACTION[:WHEN] with PHASE execute "
        "or revert, ACTION fail, fail-once, hang or kill, WHEN before (default) "
        "or after the step's side effect. For tests and demos only.",
    ),
    cfg.ListOpt(
        "shared_storage",
        default=[],
        help="Groups of fake hosts that share instance storage, each as "
        "host1+host2[+...]. Their disks live in one pool, so an evacuation "
        "between them keeps the disks instead of re-creating them.",
    ),
    cfg.ListOpt(
        "latency",
        default=[],
        help="Simulated hypervisor time per driver call, each METHOD:SECONDS (a "
        "method of the driver contract, or * for every call not named), e.g. "
        "*:0.05,spawn:2,wait_for_vif_plugged:20. Empty: calls answer at once. "
        "For benchmarks and demos (drivers/latency.py).",
    ),
    cfg.StrOpt(
        "latency_distribution",
        default="fixed",
        choices=[
            ("fixed", "every call takes its mean"),
            ("uniform", "uniform between 0 and twice the mean"),
            ("exponential", "exponential around the mean: a long tail"),
        ],
        help="How each call's delay is drawn around its [fake] latency.",
    ),
    cfg.IntOpt(
        "latency_seed",
        default=0,
        help="Seed of the latency draws (with the host name): the same seed, the same delays.",
    ),
    cfg.BoolOpt(
        "deliver_vif_events",
        default=True,
        help="Whether the fake network reports vif-plugged events. False makes "
        "spawn wait vif_plugging_timeout for an event that never arrives.",
    ),
]

libvirt_opts = [
    cfg.StrOpt(
        "uri",
        help="libvirt connection URI for libvirt hosts whose record has none "
        "(a host's own URI, `computeflow hosts add --uri`, wins). E.g. "
        "qemu:///system, or test:///default for libvirt's in-memory test driver.",
    ),
    cfg.StrOpt(
        "virt_type",
        default="qemu",
        choices=[
            ("qemu", "QEMU emulation (TCG): works everywhere, slower"),
            ("kvm", "hardware virtualisation; needs a working /dev/kvm"),
        ],
        help="Domain type of the guests. The default is qemu because a /dev/kvm "
        "that exists is not proof that KVM guests run (on some cloud machines "
        "they hang). Ignored on test:/// connections, which only run type test.",
    ),
    cfg.StrOpt(
        "instances_path",
        default="$state_path/instances",
        help="Where instance disks and console logs are kept, one directory per "
        "computeflow host and instance. Must be readable by the QEMU processes "
        "(libvirt-qemu under qemu:///system): every directory on the way needs o+x.",
    ),
    cfg.StrOpt(
        "base_images_path",
        default="$libvirt.instances_path/_base",
        help="The base-image cache that copy-on-write root disks are backed by.",
    ),
    cfg.StrOpt(
        "guest_kernel",
        help="Boot guests directly from this kernel (with guest_initrd and "
        "guest_cmdline) instead of from their root disk. For tiny test guests.",
    ),
    cfg.StrOpt(
        "guest_initrd",
        help="Initramfs for guest_kernel.",
    ),
    cfg.StrOpt(
        "guest_cmdline",
        default="console=ttyS0",
        help="Kernel command line for guest_kernel.",
    ),
    cfg.IntOpt(
        "soft_reboot_timeout",
        default=60,
        min=1,
        help="Seconds a soft reboot waits for the guest to power off after the "
        "ACPI request before giving up (the reboot operation then reboots hard).",
    ),
    cfg.FloatOpt(
        "reconnect_timeout",
        default=60.0,
        min=0,
        help="Seconds a driver call waits for a libvirt daemon that went away (a "
        "restart, a crash) to answer again, reconnecting every half second; once it "
        "answers, the call is made again from the start (every call of the driver is "
        "written to be repeated: a guest already running is not started twice). If it "
        "does not answer in time, the call fails with a transient error, which the "
        "step retries. A daemon this process never reached is not waited for. "
        "0: fail at once.",
    ),
    cfg.BoolOpt(
        "live_migration_permit_post_copy",
        default=False,
        help="Start live migrations from this host able to switch to post-copy "
        "(VIR_MIGRATE_POSTCOPY): force-complete then moves the guest to the "
        "destination at once and its memory follows on demand, instead of allowing "
        "a long downtime. Post-copy cannot be rolled back: from its start the "
        "migration is the flow's point of no return, and if the link breaks during "
        "it the guest is lost on both hosts. Needs userfaultfd on the destination.",
    ),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(driver_opts)
    conf.register_opts(fake_opts, group="fake")
    conf.register_opts(libvirt_opts, group="libvirt")
