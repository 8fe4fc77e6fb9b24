"""The site's settings reach the production data however it is read: the deploy (through inventory.py),
the docs, the tests and the health check all see production.env's models device and repository."""

from __future__ import annotations

import site_settings
from kca_stack.data import group_data


def test_production_env_reaches_the_data_without_the_inventory(tmp_path, monkeypatch):
    env_file = tmp_path / "production.env"
    env_file.write_text("# the server\nKCA_MODELS_DEVICE=/dev/nvme1n1p1\nKCA_BACKUP_REPOSITORY='sftp:b@nas:/kca'\n")
    monkeypatch.setattr(site_settings, "ENV_FILE", env_file)
    for key in ("KCA_MODELS_DEVICE", "KCA_BACKUP_REPOSITORY"):
        monkeypatch.delenv(key, raising=False)
    data = group_data("production")
    assert data["models_filesystem"]["device"] == "/dev/nvme1n1p1"
    assert data["backup"]["repository"] == "sftp:b@nas:/kca"
    # The rest of all.py's table stays: the group sets one value.
    assert data["models_filesystem"]["mountpoint"] == "/models"


def test_the_environment_wins_over_the_file(tmp_path, monkeypatch):
    env_file = tmp_path / "production.env"
    env_file.write_text("KCA_MODELS_DEVICE=/dev/sdb1\n")
    monkeypatch.setattr(site_settings, "ENV_FILE", env_file)
    monkeypatch.setenv("KCA_MODELS_DEVICE", "/dev/nvme1n1p1")
    assert group_data("production")["models_filesystem"]["device"] == "/dev/nvme1n1p1"
