"""Every corpus file through every transformation it has a golden file for: byte for byte, and idempotent."""

from __future__ import annotations

import pytest

import bootcfg_cases
from bootcfg_cases import CORPUS, GOLDEN, GOLDEN_DIR, REFUSED, TRANSFORMS, UNCHANGED, read
from orchestrator.bootcfg import BootConfigError

RENAMES = ("xvd", "nvme", "uuid")
# The chained transformations (add, then arm, then promote) are checked step by step in test_bootcfg_menulst.
REAPPLICABLE = [(f, t) for f, t in GOLDEN if t not in ("menu.add", "menu.arm", "menu.promote")]


def golden(name: str, transform: str) -> str:
    return (GOLDEN_DIR / f"{name}.{transform}").read_bytes().decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("name, transform", GOLDEN, ids=[f"{f}:{t}" for f, t in GOLDEN])
def test_the_output_is_the_golden_file(name, transform):
    out = TRANSFORMS[transform](read(name), name)
    assert out == golden(name, transform)
    assert out != read(name), "a golden file that equals its input proves nothing: list the file in UNCHANGED"


@pytest.mark.parametrize("name, transform", REAPPLICABLE, ids=[f"{f}:{t}" for f, t in REAPPLICABLE])
def test_applying_it_to_its_own_output_changes_nothing(name, transform):
    out = golden(name, transform)
    assert TRANSFORMS[transform](out, name) == out


CASES = [(kind, name, to) for kind, names in UNCHANGED.items() for name in names for to in RENAMES]


@pytest.mark.parametrize("kind, name, to", CASES, ids=[f"{n}:{t}" for _, n, t in CASES])
def test_files_without_kernel_device_names_come_back_byte_for_byte(kind, name, to, monkeypatch):
    monkeypatch.setitem(bootcfg_cases.HOSTS, name, bootcfg_cases.NITRO)
    text = read(name)
    assert TRANSFORMS[f"{kind}.{to}"](text, name) == text


@pytest.mark.parametrize("name, transform, message", REFUSED, ids=[f"{f}:{t}" for f, t, _ in REFUSED])
def test_what_the_facts_do_not_cover_is_refused_naming_file_and_line(name, transform, message):
    with pytest.raises(BootConfigError) as refused:
        TRANSFORMS[transform](read(name), name)
    assert str(refused.value) == message


def test_every_corpus_file_is_used_and_every_golden_file_is_listed():
    used = {f for f, _ in GOLDEN} | {n for names in UNCHANGED.values() for n in names} | {f for f, _, _ in REFUSED}
    facts = {"xen-2012.blkid", "nitro.blkid", "README.md"}
    assert {p.name for p in CORPUS.iterdir() if p.is_file()} == used | facts
    assert {p.name for p in GOLDEN_DIR.iterdir()} == {f"{f}.{t}" for f, t in GOLDEN}
