"""The disposable test host: a Debian 12 guest (systemd-nspawn container or QEMU virtual machine) that
stands in for the server. `testhost/testhost` is the command; `testhost.contract` is what the inventory,
the tests and the tools read (name, address, state directory, key)."""
