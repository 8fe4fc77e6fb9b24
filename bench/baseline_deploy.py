"""The baseline for bench/deploy_bench.py: connect to the host and gather the facts every deploy
gathers first (OS, packages), queue no operation."""

from pyinfra import host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import LinuxDistribution

host.get_fact(LinuxDistribution)
host.get_fact(DebPackages)
