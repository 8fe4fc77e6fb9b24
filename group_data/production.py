"""The real GPU server. Its address and SSH user come from production.env or the environment
(see inventory.py); only site-independent choices are committed here.
"""

import os

# The GPU is present here (all.py says so too): nothing to override.

# The partition that holds /models, e.g. /dev/nvme1n1p1. Site-specific, so never committed:
# set KCA_MODELS_DEVICE in production.env. Without it the deploy refuses before any operation
# (kca_stack: models_filesystem.device), unless models_filesystem.plain_directory is set on purpose.
models_device = os.environ.get("KCA_MODELS_DEVICE")

# The restic repository, off this server (restic's syntax: a path, sftp:..., rest:..., s3:...). Site-specific:
# set KCA_BACKUP_REPOSITORY in production.env; its password goes in KCA_BACKUP_PASSWORD beside it.
backup = {"repository": os.environ.get("KCA_BACKUP_REPOSITORY")}
