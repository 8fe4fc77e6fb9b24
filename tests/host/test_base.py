"""The base layer on the deployed target: user, directory tree, /models, packages, Python environment.

Every case is parametrised from the stack data: a directory or package added there is tested here.
"""


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
        assert any(line.startswith("UUID=") and line.split()[1] == fs.mountpoint for line in fstab.splitlines()), (
            "/models must be mounted by UUID"
        )


def test_python_environment(host, stack, venv):
    env = venv
    python = host.run(f"{env.path}/bin/python -c 'import sys, venv; print(sys.prefix)'")
    assert python.rc == 0, python.stderr
    assert python.stdout.strip() == env.path
    assert host.file(env.path).user == stack.user.name
    if env.link:
        link = host.file(env.link)
        assert link.is_symlink
        assert link.linked_to == env.path
