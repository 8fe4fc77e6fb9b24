"""The base layer on the deployed target: user, directory tree, /models, packages, Python environment.

Every case is parametrised from the stack data: a directory or package added there is tested here.
"""

from pathlib import Path


def test_kca_user(host, stack):
    user = host.user(stack.user.name)
    assert user.exists
    assert user.home == stack.user.home
    assert user.shell == stack.user.shell


def test_directory(host, directory):
    wanted = directory
    found = host.file(directory.path)
    assert found.is_directory
    if wanted.manage and wanted.owner:
        assert found.user == wanted.owner
        assert found.group == wanted.owner
    if wanted.manage and wanted.mode:
        assert found.mode == int(wanted.mode, 8)


def test_base_package(host, package):
    assert host.package(package).is_installed


def test_models_filesystem(host, stack):
    fs = stack.models_filesystem
    mount = host.mount_point(fs.mountpoint)
    if fs.device is None:
        # The test host: a plain directory on the root filesystem, by data.
        assert not mount.exists
        assert host.file(fs.mountpoint).is_directory
    else:
        assert mount.exists
        assert mount.filesystem == fs.fstype
        fstab = host.file("/etc/fstab").content_string
        lines = [line.split() for line in fstab.splitlines() if line.startswith("UUID=")]
        models = [fields for fields in lines if fields[1] == fs.mountpoint]
        assert models, "/models must be mounted by UUID"
        # A dead models disk must not send the boot to emergency mode (no SSH).
        options = models[0][3].split(",")
        assert "nofail" in options and any(o.startswith("x-systemd.device-timeout=") for o in options), models[0]


def test_python_environment(host, stack, venv):
    env = venv
    python = host.run(f"{env.path}/bin/python -c 'import sys, venv; print(sys.prefix)'")
    assert python.rc == 0, python.stderr
    assert python.stdout.strip() == env.path
    # Root runs pip and Python here: nothing in the venv, nor the venv's folder, is another user's.
    assert host.file(env.path).user == "root"
    assert host.file(str(Path(env.path).parent)).user == "root"
    foreign = host.run(f"find {env.path} ! -user root -print -quit")
    assert foreign.rc == 0 and foreign.stdout.strip() == "", foreign.stdout
    if env.link:
        link = host.file(env.link)
        assert link.is_symlink
        assert link.linked_to == env.path


def test_llama_cpp_tree_is_built_by_its_owner(host, stack):
    """The build runs as kca in kca's tree: nothing in it is root's (root never builds there)."""
    root = stack.paths["llama_cpp"]
    foreign = host.run(f"find {root} ! -user {stack.user.name} -print -quit")
    assert foreign.rc == 0 and foreign.stdout.strip() == "", foreign.stdout


def test_model_folders_hold_nothing_of_root(host, stack):
    """The fetcher (and the stand-ins) write model files as kca: no root-owned file under a model's folder."""
    for model in stack.models.values():
        if host.file(model.dir).exists:
            foreign = host.run(f"find {model.dir} ! -user {stack.user.name} -print -quit")
            assert foreign.rc == 0 and foreign.stdout.strip() == "", (model.name, foreign.stdout)
