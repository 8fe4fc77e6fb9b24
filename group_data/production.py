"""The real GPU server. Its address and SSH user come from production.env or the environment
(see inventory.py); only site-independent choices are committed here.
"""

import os

gpu_present = True

# The partition that holds /models, e.g. /dev/nvme1n1p1. Site-specific, so never committed:
# set KCA_MODELS_DEVICE in production.env. Without it the deploy refuses before any operation
# (kca_stack: models_filesystem.device), unless models_filesystem.plain_directory is set on purpose.
models_device = os.environ.get("KCA_MODELS_DEVICE")
