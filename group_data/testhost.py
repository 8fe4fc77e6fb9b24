"""The disposable test host: a Debian 12 container booted with systemd-nspawn (testhost/testhost).

Only what differs from the real server is here. It has no NVIDIA GPU, so the GPU layer is skipped and
GPU-only units are installed but skipped by systemd; /models is a plain directory.
"""

gpu_present = False
