"""Properties over generated files: an edit changes only the device fields it must, is idempotent,
never matches a device inside a longer name, and round-trips through the NVMe table."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.bootcfg import cmdline, default_grub, fstab, grubenv, menulst
from orchestrator.bootcfg.devices import to_nvme, to_tag, to_xvd

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SD = re.compile(r"/dev/sd([a-z]+)([0-9]*)")

letters = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=2)
numbers = st.one_of(st.just(""), st.integers(1, 128).map(str))
sd_names = st.builds(lambda l, n: f"/dev/sd{l}{n}", letters, numbers)
xvd_names = st.builds(lambda l, n: f"/dev/xvd{l}{n}", letters, numbers)
stable = st.sampled_from(["UUID=0b4ff1c3-4c55", "LABEL=data", "LABEL=My\\040Disk", "PARTUUID=6a2d1e8f-01", "tmpfs",
                          "nfs.example:/export", "/srv/distfiles", "/dev/mapper/vg0-root", "none", "proc",
                          "/dev/sda1x", "/dev/sd1", "/dev/SDA1", "/dev/md0", "/dev/disk/by-label/root"])
devices = st.one_of(sd_names, xvd_names, stable)
blanks = st.text(" \t", min_size=1, max_size=3)
targets = st.sampled_from(["/", "/boot", "/mnt/My\\040Photos", "none", "/var/lib/mysql", "/tmp", "/srv/x"])
types = st.sampled_from(["ext4", "xfs", "swap", "tmpfs", "nfs", "none", "auto"])
options = st.sampled_from(["defaults", "noatime,nofail", "sw,pri=5", "bind", "ro,soft,_netdev", "size=1G"])
ends = st.sampled_from(["\n", "\r\n"])


@st.composite
def entry_lines(draw) -> tuple[str, str, str]:
    """An fstab entry as (before the device, device, after the device): the oracle splices the device alone.

    Mount point and type, then optionally options, dump, pass and an ignored seventh field, each only
    when the ones before it are there (as libmount reads them).
    """
    rest = [draw(targets), draw(types)]
    for field in (options, st.integers(0, 2).map(str), st.integers(-1, 2).map(str),
                  st.sampled_from(["# seventh", "extra"])):
        if not draw(st.booleans()):
            break
        rest.append(draw(field))
    after = "".join(draw(blanks) + field for field in rest) + draw(st.sampled_from(["", " ", "\t"]))
    return draw(st.text(" \t", max_size=2)), draw(devices), after


other_lines = st.one_of(
    st.builds(lambda lead, text: f"{lead}#{text}", st.text(" \t", max_size=2),
              st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]), max_size=30)),
    st.text(" \t", max_size=3),
)


@st.composite
def fstabs(draw) -> list[tuple[str, str, str, str]]:
    """Lines as (before, device or None, after, ending); the last line may have no ending."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            before, device, after = draw(entry_lines())
        else:
            before, device, after = draw(other_lines), None, ""
        lines.append((before, device, after, draw(ends)))
    if lines and draw(st.booleans()):
        lines[-1] = lines[-1][:3] + ("",)
    return lines


def render(lines, rename=lambda device: device) -> str:
    return "".join(before + (rename(device) if device is not None else "") + after + end
                   for before, device, after, end in lines)


def expected_xvd(device: str) -> str:
    m = SD.fullmatch(device)
    return f"/dev/xvd{m[1]}{m[2]}" if m else device


def table_for(lines) -> dict[str, str]:
    """A per-host table with a distinct NVMe name for every sd/xvd mapping name in ``lines``."""
    names = sorted({expected_xvd(d) for _, d, _, _ in lines if d and (SD.fullmatch(d) or d.startswith("/dev/xvd"))})
    table = {name: f"/dev/nvme{i}n1" for i, name in enumerate(names)}
    return {**table, **{n.replace("/dev/xvd", "/dev/sd"): v for n, v in table.items()}}


@SETTINGS
@given(fstabs())
def test_only_sd_device_fields_change_and_every_other_byte_is_kept(lines):
    assert fstab.rename_devices(render(lines), "fstab", to_xvd()) == render(lines, expected_xvd)


@SETTINGS
@given(fstabs())
def test_renames_are_idempotent(lines):
    text = render(lines)
    table = table_for(lines)
    blkid = {nvme: {"UUID": f"uuid-{nvme[9:]}"} for nvme in set(table.values())}
    for rename in (to_xvd(), to_nvme(table), to_tag(blkid, "UUID", table)):
        once = fstab.rename_devices(text, "fstab", rename)
        assert fstab.rename_devices(once, "fstab", rename) == once


@SETTINGS
@given(fstabs())
def test_nvme_and_back_through_the_same_table_is_the_xvd_rename(lines):
    text, table = render(lines), table_for(lines)
    there = fstab.rename_devices(text, "fstab", to_nvme(table))
    assert fstab.rename_devices(there, "fstab", to_xvd(table)) == fstab.rename_devices(text, "fstab", to_xvd())


@SETTINGS
@given(st.lists(st.tuples(letters, st.integers(1, 9), st.integers(0, 9)), min_size=1, max_size=6))
def test_a_partition_never_matches_inside_a_longer_one(disks):
    """sda1 next to sda10..sda19 (and sdaa1 next to sda1): each keeps exactly its own letters and number."""
    names = [n for letters_, a, b in disks for n in (f"/dev/sd{letters_}{a}", f"/dev/sd{letters_}{a}{b}")]
    text = "".join(f"{name} /m{i} ext4 defaults 0 2\n" for i, name in enumerate(names))
    out = [e.source for e in fstab.entries(fstab.rename_devices(text, "fstab", to_xvd()))]
    assert out == [name.replace("/dev/sd", "/dev/xvd") for name in names]


@SETTINGS
@given(st.text(st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_escaping_a_field_round_trips_and_makes_one_field(value):
    escaped = fstab.escape(value)
    assert fstab.unescape(escaped) == value
    assert not re.search(r"[ \t\n]", escaped)


# A kernel command line has no escapes: a device word never holds a backslash (fstab's \040 stays in fstab).
cmdline_words = st.one_of(
    st.builds(lambda k, d: f"{k}={d}", st.sampled_from(["root", "real_root", "resume"]),
              devices.filter(lambda d: "\\" not in d)),
    st.builds(lambda k, d: f"{k}={d}", st.sampled_from(["xroot", "root2", "init", "rootfstype", "ROOT"]), sd_names),
    st.sampled_from(["ro", "quiet", "console=ttyS0,115200", "console=tty0", "panic=5", "dolvm", "root=/dev/ram0"]),
)


@st.composite
def cmdlines(draw) -> list[str]:
    """Alternating blanks and words (blanks first: they part the kernel path from its command line)."""
    parts = [draw(blanks)]
    for word in draw(st.lists(cmdline_words, max_size=8)):
        parts += [word, draw(blanks)]
    return parts


def rename_word(word: str) -> str:
    key, _, value = word.partition("=")
    return f"{key}={expected_xvd(value)}" if key in cmdline.DEVICE_PARAMS else word


@SETTINGS
@given(cmdlines(), ends)
def test_on_kernel_lines_only_device_parameter_values_change(parts, end):
    kernel = "".join(parts)
    text = f"default 0\ntitle t{end}\troot (hd0){end}\tkernel /boot/vmlinuz-sda1{kernel}{end}\tinitrd /i{end}"
    expected = "".join(rename_word(p) if i % 2 else p for i, p in enumerate(parts))
    out = menulst.rename_devices(text, "menu.lst", to_xvd())
    assert out == text.replace(f"sda1{kernel}{end}", f"sda1{expected}{end}")
    assert menulst.rename_devices(out, "menu.lst", to_xvd()) == out


params = st.dictionaries(st.sampled_from(["panic", "console", "nvme_core.io_timeout", "root", "quiet_level"]),
                         st.sampled_from(["0", "10", "ttyS0", "tty1", "4294967295", "/dev/xvda1"]), max_size=4)


@SETTINGS
@given(cmdlines(), params, st.sampled_from(['"', "'", ""]))
def test_setting_parameters_is_idempotent_and_keeps_the_other_words_in_order(parts, wanted, quote):
    value = "".join(parts).strip(" \t") if quote else "".join(parts).split()[0] if "".join(parts).split() else ""
    text = f"# x\nGRUB_CMDLINE_LINUX={quote}{value}{quote}\nGRUB_TIMEOUT=5\n"
    once = default_grub.set_cmdline_params(text, "grub", wanted)
    assert default_grub.set_cmdline_params(once, "grub", wanted) == once
    assert once.startswith("# x\nGRUB_CMDLINE_LINUX=") and once.endswith("\nGRUB_TIMEOUT=5\n")
    after = default_grub.get_variable(once, "grub", "GRUB_CMDLINE_LINUX").split()
    untouched = [w for w in value.split() if w.partition("=")[0] not in wanted]
    assert [w for w in after if w.partition("=")[0] not in wanted] == untouched
    for key, val in wanted.items():
        if key == "console":
            assert any(w.partition("=")[2].partition(",")[0] == val for w in after if w.startswith("console="))
        else:
            assert cmdline.get_params(" ".join(after), key) and set(cmdline.get_params(" ".join(after), key)) == {val}


env_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40)
env_values = st.dictionaries(st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True), env_text, max_size=8)


@SETTINGS
@given(env_values, env_values)
def test_grubenv_round_trips_and_stays_1024_bytes(first, second):
    env = grubenv.new_grubenv(first)
    assert grubenv.parse_grubenv(env) == first
    edited = grubenv.edit_grubenv(env, "e", second)
    assert len(edited.encode()) == 1024
    assert grubenv.parse_grubenv(edited) == {**first, **second}
    assert grubenv.edit_grubenv(edited, "e", second) == edited
