"""Provision the whole kca AI server: `pyinfra inventory.py deploy.py`.

Reads like a table of contents: the stack is built from group_data/ and validated first, so that a
broken stack stops the run before any operation is queued; then each layer is one task module.
"""

import sys

from pyinfra import host

from kca_stack import StackError, load_stack
from tasks import base

try:
    stack = load_stack(host.data)
except StackError as error:
    # Nothing has been queued yet: the host is untouched.
    sys.stderr.write(f"\n{host.name}: refusing to deploy, {error}\n\nNothing on the host was changed.\n")
    sys.exit(2)

base.deploy_base(stack=stack)
