"""The site's settings for the real server: `production.env` beside this file (KEY=VALUE lines, never
committed), with KCA_* environment variables on top (so a CI secret can override the file).

Read the same way by inventory.py (the address, user, port and key of the server) and by
group_data/production.py (the /models device, the backup repository), so the production data is the
same whether the deploy, the docs, the tests or the health check read it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_FILE = Path(__file__).resolve().parent / "production.env"


def read(env_file: Path | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    env_file = ENV_FILE if env_file is None else env_file
    settings = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                settings[key.strip()] = value.strip().strip("'\"")
    environ = os.environ if environ is None else environ
    settings.update({k: v for k, v in environ.items() if k.startswith("KCA_")})
    return settings
