"""Boot configuration as pure text -> text functions: fstab, GRUB legacy menu.lst, GRUB 2.

Nothing here reads or writes a file, except ``validate``, whose checks run the
real tools (findmnt, grub-script-check, sh, grub-editenv) on a temporary copy of
a new text before anything replaces the old file. Every editor takes the text,
a name for error messages (the path, or host:path) and its parameters; gives
back the new text, byte-identical where it had nothing to change; is idempotent;
and refuses a malformed input with one line, ``name:line: what``.
"""

from .blkid import parse_blkid_export
from .devices import to_nvme, to_tag, to_xvd
from .plan import BootFacts, plan_bootcfg
from .text import BootConfigError

__all__ = ["BootConfigError", "BootFacts", "parse_blkid_export", "plan_bootcfg", "to_nvme", "to_tag", "to_xvd"]
