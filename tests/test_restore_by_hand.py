"""The README's restore-by-hand recipe, run as written with stock tools, on an encrypted chain."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import next_second, summary_value
from test_backup_roundtrip import gpg_home  # noqa: F401  (fixture)
from treecmp import fingerprint, make_awkward_tree

README = Path(__file__).resolve().parent.parent / "README.md"


def recipe() -> str:
    text = README.read_text()
    block = re.search(r"<!-- restore-by-hand -->\n```sh\n(.*?)```\n<!-- /restore-by-hand -->", text, re.S)
    assert block, "README lost its restore-by-hand block"
    return block.group(1)


def with_values(script: str, **values: str) -> str:
    for name, value in values.items():
        script, n = re.subn(rf"^{name}=.*$", f"{name}='{value}'", script, count=1, flags=re.M)
        assert n == 1, name
    return script


def test_readme_recipe_restores_an_encrypted_incremental_chain(site, tmp_path, gpg_home):  # noqa: F811
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    make_awkward_tree(site.data, big_size=2500 * 1024)
    code, out = site.backup()
    assert code == 0, out
    full = summary_value(out, "set")
    next_second()
    (site.data / "with space.txt").unlink()
    (site.data / "later.txt").write_text("added in the incremental")
    code, out = site.backup()
    assert code == 0, out
    incr = summary_value(out, "set")
    with site.catalog() as cat:
        (slug,) = [d["slug"] for d in cat.dirs(incr)]
    target = tmp_path / "by-hand"
    script = with_values(recipe(), SETS_DIR=str(site.staging / "complete"), SETS=f"{full} {incr}",
                         SLUG=slug, TARGET=str(target))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "GNUPGHOME": str(gpg_home)})
    assert done.returncode == 0, done.stderr
    restored = target / site.data.relative_to("/")
    assert fingerprint(restored) == fingerprint(site.data)
    assert not (restored / "with space.txt").exists()
