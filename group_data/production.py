"""The real GPU server. Its address and SSH user come from production.env or the environment
(site_settings.py, also read by inventory.py); only site-independent choices are committed here.
"""

import site_settings

_SITE = site_settings.read()

models_filesystem = {
    # The partition that holds /models, e.g. /dev/nvme1n1p1. Site-specific, so never committed:
    # set KCA_MODELS_DEVICE in production.env. Without it the deploy refuses before any operation
    # (kca_stack: models_filesystem.device), unless models_filesystem.plain_directory is set on purpose.
    "device": _SITE.get("KCA_MODELS_DEVICE"),
}

# The restic repository, off this server (restic's syntax: a path, sftp:..., rest:..., s3:...). Site-specific:
# set KCA_BACKUP_REPOSITORY in production.env; its password goes in KCA_BACKUP_PASSWORD beside it.
backup = {"repository": _SITE.get("KCA_BACKUP_REPOSITORY")}
