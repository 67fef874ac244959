"""``inv binhost``: compile once in a build chroot, serve the binaries, point instances at them."""
