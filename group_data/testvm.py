"""The test host as a QEMU virtual machine (`testhost/testhost --backend vm`; `./kca test-vm`). The VM
tests (tests/vm/) lay these values on top of testhost.py. A VM shows what a container cannot: its own
kernel and boot, and block devices, so /models on its own disk, mounted by UUID.

No host is in a `testvm` group in inventory.py: the VM is the same inventory entry as the container.
"""

# The /models disk. QEMU gives each disk a serial, so the guest names it /dev/disk/by-id/virtio-<serial>,
# a stable name as on the real server. The disk tests attach one disk per case.
models_disk_serials = {
    "empty": "case-empty",  # no filesystem, no partition table
    "files": "case-files",  # ext4 holding files
    "other_fs": "case-ext3",  # a filesystem of another type than models_filesystem.fstype
    "partitioned": "case-gpt",  # a GPT partition table, no filesystem on the whole disk
}
models_disk_size = "1G"  # sparse image files on this machine

# The layers deployed in the VM, by acceleration. Under TCG (emulation, several times slower than the
# container) only the base layer (user, /models, packages, secrets, firewall): what a container cannot
# show. Under KVM the whole stack fits.
deploy_layers_by_accel = {
    "kvm": ["base", "llm", "support", "apps"],
    "tcg": ["base"],
}
