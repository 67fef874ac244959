"""`inv --dry build-kernel` for the paths that cannot run here: genkernel, an overlay's sources
(the seed's ec2-sources) and Gentoo's distribution kernel, each as the exact commands.

No Debian package gives genkernel, eselect or a Gentoo kernel ebuild, so these paths are tested
as the argv lists our chroot/ scripts would run (each script prints them under --dry and runs
nothing). What does run is real: the job, Portage from PyPI answering ``kernel-info`` in a
scratch prefix (``binhost.mode: prefix``) whose toy repository has ``sys-kernel/gentoo-sources``
and ``sys-kernel/gentoo-kernel`` ebuilds (the seed's overlay is not enabled there), the scripts
themselves and the settings' checks. The make path runs for real in test_kernel_build.py.
"""

from __future__ import annotations

import copy
import hashlib
import io
import shlex
from pathlib import Path

import pytest

import portage_lab
from orchestrator.job import execute
from orchestrator.kernel.build import build_kernels

REPO_ROOT = Path(__file__).resolve().parents[1]
EC2_FRAGMENT = (REPO_ROOT / "chroot" / "kernel" / "ec2" / "ec2.config").read_text()
WORK = "var/tmp/gentoo-ec2-orchestrator/kernel"
TOY_EBUILD = 'EAPI=8\nDESCRIPTION="toy"\nHOMEPAGE="https://example.invalid"\nLICENSE="MIT"\nSLOT="${PV}"\nKEYWORDS="amd64"\n'


@pytest.fixture
def prefix(tmp_path, monkeypatch):
    """A scratch Portage prefix with a toy repository that has kernel packages (never emerged)."""
    repo = portage_lab.make_repo(tmp_path / "repo", packages=0)
    (repo / "profiles" / "categories").write_text("app-lab\nsys-kernel\n")
    for name, version in (("gentoo-sources", "6.1.60"), ("gentoo-kernel", "6.6.52")):
        (repo / "sys-kernel" / name).mkdir(parents=True)
        (repo / "sys-kernel" / name / f"{name}-{version}.ebuild").write_text(TOY_EBUILD)
    eprefix = portage_lab.make_prefix(tmp_path / "eprefix", profile=repo / portage_lab.PROFILE,
                                      scratch=tmp_path / "scratch", world=[],
                                      repos_conf=f"[DEFAULT]\nmain-repo = lab\n\n[lab]\nlocation = {repo}\n").eprefix
    for key, value in portage_lab.portage_env(eprefix).items():
        if key != "PORTAGE_OVERRIDE_EPREFIX":  # the job sets it for each script, from binhost.root
            monkeypatch.setenv(key, value)
    return eprefix


def site(tmp_path: Path, eprefix: Path, *images: dict) -> dict:
    for image in images:
        (tmp_path / "configs" / image["name"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "configs" / image["name"] / "ec2.config").write_text(EC2_FRAGMENT)
    return {
        "orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
        "binhost": {"mode": "prefix", "root": str(eprefix)},
        "kernel": {"config_dir": str(tmp_path / "configs"), "images": list(images)},
    }


def dry_run(config: dict) -> tuple[int, list[str], str]:
    """The job under --dry: exit code, the argv of every command it would run, the whole output."""
    config = copy.deepcopy(config)
    config["run"] = {"dry": True}
    out = io.StringIO()
    code = execute(config, "build-kernel", lambda run: build_kernels(run), out=out)
    commands = [shlex.split(line.split(": ", 1)[1]) for line in out.getvalue().splitlines()
                if line.startswith("[dry-run] local: ")]
    return code, commands, out.getvalue()


def slug(tree: str) -> str:
    return f"{Path(tree).name}-{hashlib.sha256(tree.encode()).hexdigest()[:8]}"


def test_the_seeds_procedure_with_genkernel_as_exact_commands(tmp_path, prefix):
    """layman -s sabayon-distro / emerge ec2-sources / eselect kernel set / genkernel --makeopts=-jN all."""
    image = {"name": "seed", "source": {"package": "sys-kernel/ec2-sources", "repository": "sabayon-distro"},
             "fragments": ["ec2.config"], "builder": "genkernel", "initramfs": "genkernel", "jobs": 3}
    code, commands, output = dry_run(site(tmp_path, prefix, image))
    assert code == 0, output
    work = f"{prefix}/{WORK}/seed"
    tree = f"{prefix}/usr/src/linux-<the version sys-kernel/ec2-sources installs>"
    build = f"{work}/build/{slug(tree)}"
    assert commands == [
        ["eselect", "repository", "enable", "sabayon-distro"],
        ["emaint", "sync", "--repo", "sabayon-distro"],
        ["emerge", "--ask=n", "--color=n", "--verbose", "--update", "--noreplace", "sys-kernel/ec2-sources"],
        ["eselect", "kernel", "set", "linux-<the version sys-kernel/ec2-sources installs>"],
        ["mkdir", "-p", build],
        ["make", "-C", tree, f"O={build}", "defconfig"],
        [f"{tree}/scripts/kconfig/merge_config.sh", "-m", "-O", build, f"{build}/.config", f"{work}/input/ec2.config"],
        ["make", "-C", tree, f"O={build}", "olddefconfig"],
        ["rm", "-rf", f"{work}/stage"],
        ["mkdir", "-p", f"{work}/stage/boot"],
        ["cp", f"{build}/.config", f"{work}/build/genkernel.config"],
        ["genkernel", "--no-menuconfig", "--no-save-config", "--no-clean", "--no-mrproper", "--no-mountboot",
         "--no-symlink", "--install", f"--kernel-config={work}/build/genkernel.config", f"--kerneldir={tree}",
         f"--kernel-outputdir={build}", "--makeopts=-j3", f"--bootdir={work}/stage/boot",
         f"--kernel-modules-prefix={work}/stage", "--kernel-filename=vmlinuz", "--systemmap-filename=System.map",
         "--initramfs-filename=initramfs.img", "--all-ramdisk-modules", "all"],
        ["cp", f"{work}/build/genkernel.config", f"{work}/stage/boot/config"],
        ["lsinitrd", f"{work}/stage/boot/initramfs.img", ">", f"{work}/stage/initramfs.list"],
    ]
    assert f"[dry-run] would publish kernel <release> for seed to {tmp_path}/state/kernels/seed/<release>/" in output
    assert not (tmp_path / "state").exists() and not Path(work).exists(), "--dry changes nothing"


def test_gentoo_kernel_with_config_d_fragments_as_exact_commands(tmp_path, prefix):
    image = {"name": "dist", "source": {"package": "sys-kernel/gentoo-kernel"}, "builder": "portage",
             "fragments": ["ec2.config"]}
    stale = prefix / "etc" / "kernel" / "config.d"
    stale.mkdir(parents=True)
    (stale / "gentoo-ec2-orchestrator-old.config").write_text("CONFIG_FOO=y\n")
    (stale / "10-admin.config").write_text("CONFIG_BAR=y\n")
    code, commands, output = dry_run(site(tmp_path, prefix, image))
    assert code == 0, output
    work = f"{prefix}/{WORK}/dist"
    tree = f"{prefix}/usr/src/linux-<the version sys-kernel/gentoo-kernel installs>"
    assert commands == [
        ["mkdir", "-p", str(stale)],
        ["rm", "-f", f"{stale}/gentoo-ec2-orchestrator-old.config"],  # ours only: the admin's own stays
        ["cp", f"{work}/input/ec2.config", f"{stale}/gentoo-ec2-orchestrator-ec2.config"],
        ["emerge", "--ask=n", "--color=n", "--verbose", "sys-kernel/gentoo-kernel"],
        ["rm", "-rf", f"{work}/stage"],
        ["mkdir", "-p", f"{work}/stage/boot"],
        ["cp", f"{tree}/arch/x86/boot/bzImage", f"{work}/stage/boot/vmlinuz"],
        ["cp", f"{tree}/System.map", f"{work}/stage/boot/System.map"],
        ["cp", f"{tree}/.config", f"{work}/stage/boot/config"],
        ["mkdir", "-p", f"{work}/stage/lib/modules"],
        ["cp", "-a", f"{prefix}/lib/modules/<release>", f"{work}/stage/lib/modules/<release>"],
        ["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--kver", "<release>", "--kmoddir",
         f"{work}/stage/lib/modules/<release>", "--add-drivers", "nvme ena xen-blkfront xen-netfront",
         f"{work}/stage/boot/initramfs.img"],
        ["lsinitrd", f"{work}/stage/boot/initramfs.img", ">", f"{work}/stage/initramfs.list"],
    ]


def test_gentoo_sources_with_make_and_dracut_as_exact_commands(tmp_path, prefix):
    image = {"name": "web", "source": {"package": "sys-kernel/gentoo-sources"}, "fragments": ["ec2.config"],
             "drivers": ["virtio_blk"], "jobs": 2}
    code, commands, output = dry_run(site(tmp_path, prefix, image))
    assert code == 0, output
    work = f"{prefix}/{WORK}/web"
    tree = f"{prefix}/usr/src/linux-<the version sys-kernel/gentoo-sources installs>"
    build = f"{work}/build/{slug(tree)}"
    assert commands[:2] == [
        ["emerge", "--ask=n", "--color=n", "--verbose", "--update", "--noreplace", "sys-kernel/gentoo-sources"],
        ["eselect", "kernel", "set", "linux-<the version sys-kernel/gentoo-sources installs>"]]
    assert ["make", "-C", tree, f"O={build}", "-j2"] in commands
    assert ["make", "-C", tree, f"O={build}", f"INSTALL_MOD_PATH={work}/stage", "modules_install"] in commands
    assert commands[-2] == ["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--kver", "<release>",
                            "--kmoddir", f"{work}/stage/lib/modules/<release>", "--add-drivers",
                            "nvme ena xen-blkfront xen-netfront virtio_blk", f"{work}/stage/boot/initramfs.img"]


def test_a_missing_config_file_is_one_line_naming_the_setting_and_file(tmp_path, prefix):
    image = {"name": "web", "source": {"package": "sys-kernel/gentoo-sources"}, "fragments": ["nvme.config"]}
    config = site(tmp_path, prefix, image)
    code, commands, output = dry_run(config)
    assert (code, commands) == (2, [])
    assert output.splitlines()[-1] == (f"error: kernel.images[0].fragments[0]: {tmp_path}/configs/web/nvme.config "
                                       "does not exist")


def test_an_unknown_image_is_refused(tmp_path, prefix):
    config = site(tmp_path, prefix, {"name": "web", "source": {"package": "sys-kernel/gentoo-sources"}})
    config["run"] = {"dry": True}
    out = io.StringIO()
    assert execute(config, "build-kernel", lambda run: build_kernels(run, "db"), out=out) == 2
    assert out.getvalue().splitlines()[-1] == "error: --image: no image 'db' in kernel.images (web)"


@pytest.mark.parametrize("image, message", [
    ({"name": "web", "source": {}}, "kernel.images[0].source: set exactly one of package (a Portage package) "
                                    "or path (an unpacked tree)"),
    ({"name": "web", "source": {"path": "usr/src/linux"}},
     "kernel.images[0].source.path: must be an absolute path inside the build system, got 'usr/src/linux'"),
    ({"name": "web", "source": {"path": "/usr/src/linux"}, "builder": "portage"},
     "kernel.images[0].builder: portage builds a distribution kernel package (source.package: "
     "sys-kernel/gentoo-kernel), not a path"),
    ({"name": "web", "source": {"package": "sys-kernel/gentoo-kernel"}, "builder": "portage",
      "fragments": ["ec2.frag"]},
     "kernel.images[0].fragments[0]: 'ec2.frag': /etc/kernel/config.d reads only *.config"),
    ({"name": "web", "source": {"path": "/usr/src/linux"}, "initramfs": "genkernel"},
     "kernel.images[0].initramfs: genkernel makes its initramfs only with builder genkernel"),
    ({"name": "web", "source": {"path": "/usr/src/linux"}, "fragments": ["../etc/shadow"]},
     "kernel.images[0].fragments: '../etc/shadow' is not a file name in kernel.config_dir/web/"),
    ({"name": "web", "source": {"path": "/usr/src/linux"}, "base": "make all"},
     "kernel.images[0].base: 'make all' is not a make config target like defconfig"),
    ({"name": "web", "source": {"path": "/usr/src/linux"}, "jobs": 5000},
     "kernel.images[0].jobs: must be at most 1024, got 5000"),
    ({"name": "web", "source": {"path": "/usr/src/linux"}, "hypervisors": ["kvm"]},
     "kernel.images[0].hypervisors[0]: 'kvm' is not one of 'nitro', 'xen'"),
])
def test_bad_image_settings_are_one_line_each(tmp_path, image, message):
    config = site(tmp_path, tmp_path, image)
    out = io.StringIO()
    assert execute(config, "build-kernel", lambda run: build_kernels(run), out=out) == 2
    assert out.getvalue() == message + "\n"


def test_the_example_site_files_kernel_section_is_valid():
    import yaml

    raw = yaml.safe_load((REPO_ROOT / "examples" / "site.yaml").read_text())
    from orchestrator.config import load_section

    images = load_section("kernel", raw["kernel"]).images
    assert [(i.name, i.builder, i.initramfs) for i in images] == [("web", "make", "dracut"),
                                                                  ("legacy", "genkernel", "genkernel")]


def test_a_work_dir_symlinked_out_of_the_chroot_is_refused(tmp_path):
    """We copy into and delete under the work dir from the build box: a symlink must not lead us out."""
    from orchestrator.buildenv import BuildRoot, BuildSession
    from orchestrator.errors import OrchestratorError
    from orchestrator.kernel.session import KERNEL, KernelSession
    from orchestrator.run import LocalTarget

    root, outside = tmp_path / "root", tmp_path / "host-dir"
    (root / "var" / "tmp").mkdir(parents=True)
    outside.mkdir()
    (root / "var" / "tmp" / "gentoo-ec2-orchestrator").symlink_to(outside)
    build = BuildSession(None, KERNEL, BuildRoot("chroot", root, "binhost.root"), LocalTarget(dry=True),
                         log_dir=tmp_path / "logs", timeout=60, env={}, log=None)
    session = KernelSession(build)
    inside = "/var/tmp/gentoo-ec2-orchestrator/kernel/web/input"
    with pytest.raises(OrchestratorError) as err:
        session.host_path(inside)
    assert str(err.value) == (f"{inside} in the chroot resolves to {outside}/kernel/web/input, outside {root}; "
                              "refusing to touch it (check kernel.work_dir)")
    assert session.host_path("/var/tmp/kernel") == root / "var" / "tmp" / "kernel"


@pytest.mark.parametrize("line, shown", [
    ("  CC      init/main.o", True), ("  CC [M]  fs/ext4/inode.o", True), ("  LD      vmlinux", True),
    ("Kernel: arch/x86/boot/bzImage is ready  (#1)", True), ("drivers/x.c:12:3: error: 'y' undeclared", True),
    ("make[2]: *** [scripts/Makefile.build:250: fs/open.o] Error 1", True),
    (" * kernel: >> Compiling 6.6.13-gentoo bzImage ...", True),
    ("dracut: *** Creating initramfs image file '/boot/initramfs.img' ***", True),
    (">>> Emerging (1 of 1) sys-kernel/gentoo-kernel-6.6.52::gentoo", True),
    ("make[1]: Entering directory '/var/tmp/build'", False), (" * Applying patch ...", False),
    ("drivers/x.c:12:3: warning: unused variable 'y'", False),
])
def test_progress_shows_the_lines_worth_showing(line, shown):
    from orchestrator.kernel.session import NOTABLE

    assert bool(NOTABLE.match(line)) is shown
