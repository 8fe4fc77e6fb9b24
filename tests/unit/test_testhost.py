"""The test host's pure parts: its contract, the apt and pip configuration carried into the guest, the
cache keys of its images, and the command lines of both backends."""

from pathlib import Path

import pytest

from testhost import contract, hostconfig, image, vm
from testhost.container import nspawn_args

# ---- contract --------------------------------------------------------------------------------------


def test_instance_0_keeps_the_historical_values():
    host = contract.instance({})
    assert (host.machine, host.guest_address, host.host_address, host.subnet, host.nft_table) == (
        "kcatest",
        "10.213.7.2",
        "10.213.7.1",
        "10.213.7.0/24",
        "kca_testhost",
    )
    assert host.state_dir == Path("/var/lib/kca-testhost")
    assert host.ssh_key == Path("/var/lib/kca-testhost/ssh/id_ed25519")


def test_instance_n_has_its_own_name_subnet_state_and_table():
    host = contract.instance({"KCA_TESTHOST_INSTANCE": "5"})
    assert (host.machine, host.guest_address, host.subnet, host.nft_table) == (
        "kcatest5",
        "10.213.12.2",
        "10.213.12.0/24",
        "kca_testhost_5",
    )
    assert host.state_dir == Path("/var/lib/kca-testhost-5")


def test_state_dir_from_the_environment_wins():
    host = contract.instance({"KCA_TESTHOST_INSTANCE": "5", "KCA_STATE_DIR": "/tmp/x"})
    assert host.ssh_config == Path("/tmp/x/ssh/config")


@pytest.mark.parametrize("raw", ["-1", "x", "100", "1.5"])
def test_a_bad_instance_is_refused(raw):
    with pytest.raises(ValueError, match="KCA_TESTHOST_INSTANCE"):
        contract.instance({"KCA_TESTHOST_INSTANCE": raw})


def test_link_names_fit_the_kernel_limit():
    host = contract.instance({"KCA_TESTHOST_INSTANCE": str(contract.MAX_INSTANCE)})
    assert len(f"tap-{host.machine}") <= 15 and len(f"ve-{host.machine}") <= 15


# ---- apt -------------------------------------------------------------------------------------------

DEB822 = """\
# disabled copy
Types: deb
URIs: http://old.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian http://second.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://vendor.example/apt
Suites: stable
Components: main

Types: deb
URIs: http://mirror.example/debian
Suites: bookworm-backports
Components: non-free
"""


def test_the_mirror_is_the_first_enabled_deb_main_stanza_of_the_suite():
    assert hostconfig.mirror_from_deb822(DEB822, "bookworm") == "http://mirror.example/debian"
    assert hostconfig.mirror_from_deb822(DEB822, "trixie") is None


def test_the_guest_keeps_enabled_main_stanzas_of_the_suite_family_only():
    kept = hostconfig.guest_deb822(DEB822, "bookworm")
    stanzas = hostconfig.deb822_stanzas(kept)
    uris = [hostconfig.deb822_fields(s)["uris"] for s in stanzas]
    # deb-src kept (same suite, main); disabled, third-party and non-main stanzas dropped.
    assert uris == [
        "http://src.example/debian",
        "http://mirror.example/debian http://second.example/debian",
        "http://mirror.example/debian-security",
    ]
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in kept  # stanzas are copied whole


ONE_LINE = """\
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib
# deb http://commented.example/debian bookworm main
deb http://mirror.example/debian-security bookworm-security main
deb http://mirror.example/debian bookworm-backports contrib
deb https://vendor.example/apt stable main
deb-src http://mirror.example/debian bookworm main
"""


def test_one_line_sources_give_the_mirror_and_the_guest_lines():
    assert hostconfig.mirror_from_one_line(ONE_LINE, "bookworm") == "http://mirror.example/debian"
    assert hostconfig.guest_one_line(ONE_LINE, "bookworm") == [
        "deb http://mirror.example/debian bookworm main contrib",
        "deb http://mirror.example/debian-security bookworm-security main",
        "deb-src http://mirror.example/debian bookworm main",
    ]


# ---- pip -------------------------------------------------------------------------------------------

PIP_CONFIG_LIST = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels-old'
install.no-compile='true'
:env:.find-links='/opt/wheels'
:env:.default-timeout='180'
"""


def test_pip_environment_variables_win_over_files_as_in_pip():
    merged = hostconfig.merge_pip_config_list(PIP_CONFIG_LIST)
    assert merged["global"]["find-links"] == "/opt/wheels"
    assert merged["global"]["default-timeout"] == "180"
    assert merged["install"] == {"no-compile": "true"}


def test_pip_conf_renders_global_first_and_sorted():
    text = hostconfig.render_pip_conf({"install": {"b": "2"}, "global": {"z": "1", "a": "0"}})
    assert text.splitlines()[1:] == ["[global]", "a = 0", "z = 1", "", "[install]", "b = 2", ""]


def test_pip_local_paths_once_each_in_order():
    merged = hostconfig.merge_pip_config_list(PIP_CONFIG_LIST)
    assert hostconfig.pip_local_paths(merged) == [
        "/etc/ssl/certs/ca-certificates.crt",
        "/opt/pypi/simple",
        "/opt/pypi-more/simple",
        "/opt/wheels",
    ]


def test_pip_environment_names_become_keys():
    env = {"PIP_FIND_LINKS": "/w", "PIP_CONFIG_FILE": "/c", "HOME": "/root"}
    assert hostconfig.pip_environment(env) == {"find-links": "/w"}


def test_pip_share_dirs(tmp_path):
    index = tmp_path / "srv" / "pypi" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "srv" / "wheels"
    wheels.mkdir()
    bundle = tmp_path / "srv" / "certs" / "bundle.crt"
    bundle.parent.mkdir()
    bundle.write_text("x")
    guest_root = tmp_path / "guest"
    (guest_root / str(bundle.parent).lstrip("/")).mkdir(parents=True)
    (guest_root / str(bundle).lstrip("/")).write_text("guest's own")
    shares, notes = hostconfig.pip_share_dirs(
        [f"{index}/", str(wheels), str(bundle), "/nonexistent/x", "/opt"], guest_root
    )
    # The PEP 503 tree is shared from the folder above simple/; the guest keeps its own CA bundle;
    # a missing path is skipped; a top-level folder is never shadowed.
    assert shares == sorted([str(index.parent), str(wheels)])
    assert notes == ["not sharing /opt (too close to /) for pip path /opt"]


# ---- cache keys ------------------------------------------------------------------------------------


def test_cache_key_depends_on_every_part():
    key = image.cache_key("recipe", "bookworm", "systemd,sudo")
    assert len(key) == 12
    assert key == image.cache_key("recipe", "bookworm", "systemd,sudo")
    assert key != image.cache_key("recipe", "bookworm", "systemd,sudo,curl")
    assert key != image.cache_key("recipe", "trixie", "systemd,sudo")


def test_the_rootfs_is_the_same_for_every_instance(monkeypatch):
    """Nothing instance-specific is baked into the tarball: all instances share one."""
    monkeypatch.setenv("KCA_TESTHOST_INSTANCE", "5")
    five = image.rootfs_key()
    monkeypatch.setenv("KCA_TESTHOST_INSTANCE", "0")
    assert image.rootfs_key() == five


def test_the_vm_image_key_follows_the_rootfs(monkeypatch):
    before = vm.vm_key()
    monkeypatch.setattr(image, "GUEST_PACKAGES", image.GUEST_PACKAGES + ",less")
    assert vm.vm_key() != before


# ---- command lines ---------------------------------------------------------------------------------

HOST5 = contract.instance({"KCA_TESTHOST_INSTANCE": "5"})


def test_nspawn_args_bind_the_caches_and_share_pip_paths_read_only():
    args = nspawn_args(HOST5, Path("/s/rootfs"), Path("/c/guest"), ["/opt/pypi"])
    assert args[:4] == ["systemd-nspawn", "--boot", "--register=no", "--keep-unit"]
    assert args[4:8] == ["-M", "kcatest5", "-D", "/s/rootfs"]
    assert "--bind=/c/guest/pip:/root/.cache/pip" in args
    assert args[-1] == "--bind-ro=/opt/pypi"


def test_nspawn_binds_what_the_test_host_data_names():
    """The image cache, the backup repository and the rootfs tarball, at the guest paths that
    group_data/testhost.py names."""
    from kca_stack import build_stack
    from kca_stack.data import group_data

    stack = build_stack(group_data("testhost"))
    args = nspawn_args(HOST5, Path("/s/rootfs"), Path("/c/guest"), [], Path("/c/rootfs/debian12-x.tar.zst"))
    local = stack.docker["local_images"]
    assert f"--bind=/c/guest/images:{local['cache_dir']}" in args
    assert f"--bind-ro=/c/rootfs/debian12-x.tar.zst:{local['base_rootfs']}" in args
    assert f"--bind={HOST5.state_dir}/backup-repository:{stack.backup.repository}" in args


def _option(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_qemu_args_under_tcg_with_a_models_disk():
    shares = {"pip-cache": ("/c/pip", False), "pip-share-0": ("/opt/pypi", True)}
    args = vm.qemu_args(HOST5, "tcg", Path("/s"), "tap-kcatest5", Path("/s/models.img"), shares)
    assert _option(args, "-machine") == ["q35,accel=tcg"] and _option(args, "-cpu") == ["max"]
    assert "virtio-blk-pci,drive=models,serial=kca-models" in _option(args, "-device")
    assert f"virtio-net-pci,netdev=net0,mac={vm.mac_address(HOST5)}" in _option(args, "-device")
    assert _option(args, "-virtfs") == [
        "local,path=/c/pip,mount_tag=pip-cache,security_model=none",
        "local,path=/opt/pypi,mount_tag=pip-share-0,security_model=none,readonly=on",
    ]
    assert "root=/dev/vda" in _option(args, "-append")[0]


def test_qemu_args_under_kvm_without_a_models_disk():
    args = vm.qemu_args(HOST5, "kvm", Path("/s"), "tap-kcatest5", None, {})
    assert _option(args, "-cpu") == ["host"]
    assert not any("drive=models" in a for a in args)


def test_the_models_disk_is_named_by_its_serial():
    assert vm.MODELS_DEVICE == "/dev/disk/by-id/virtio-kca-models"


def test_each_instance_gets_its_own_mac():
    assert vm.mac_address(HOST5) != vm.mac_address(contract.instance({}))


def test_guest_fstab_mounts_the_shares_without_blocking_boot():
    fstab = vm.guest_fstab({"pip-cache": ("/c/pip", "/root/.cache/pip", False), "s0": ("/opt/p", "/opt/p", True)})
    lines = fstab.splitlines()
    assert "/dev/vda / ext4 rw,errors=remount-ro 0 1" in lines
    assert f"pip-cache /root/.cache/pip 9p {vm.NINEP} 0 0" in lines
    assert f"s0 /opt/p 9p {vm.NINEP},ro 0 0" in lines
    assert "nofail" in vm.NINEP


def test_each_instance_has_its_own_apt_archives_seeded_from_the_shared_one(tmp_path):
    """apt locks its archives folder for a whole install: two instances sharing one would fail each
    other's installs. Instance 0 keeps the shared folder; another gets its own, with the packages linked."""
    shared = tmp_path / "apt-archives"
    shared.mkdir()
    (shared / "zstd_1.5.4_amd64.deb").write_bytes(b"deb")
    (shared / "lock").write_text("")
    assert image.apt_archives(tmp_path, contract.instance({"KCA_TESTHOST_INSTANCE": "0"})) == shared
    own = image.apt_archives(tmp_path, contract.instance({"KCA_TESTHOST_INSTANCE": "3"}))
    assert own != shared and own.parent == tmp_path
    assert sorted(p.name for p in own.iterdir()) == ["zstd_1.5.4_amd64.deb"]
    assert (own / "zstd_1.5.4_amd64.deb").stat().st_ino == (shared / "zstd_1.5.4_amd64.deb").stat().st_ino
