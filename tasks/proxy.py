"""The authenticating reverse proxy: nginx from the OS, run by its own unit as its own user, in front of
every service that names a `backend` (vLLM: its own API key guards only paths under /v1). It holds the
service's port from the port map and requires the service's key on every path but the public ones.

The key reaches nginx as a small map file built on the host from the secret (never on the control
machine, never printed) and handed to the proxy's unit alone through LoadCredential."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from kca_stack import Service, Stack

from . import ops
from .firewall import UNIT as FIREWALL_UNIT
from .secrets import secret_path

SOURCE = "tasks/proxy.py"
CONFIG_TEMPLATE = "templates/etc/kca/llm-proxy/nginx.conf.j2"
UNIT_TEMPLATE = "templates/etc/systemd/system/kca-llm-proxy.service.j2"
# Debian's own unit would serve its default site on :80, which is Dify's: it is masked before nginx
# is installed, so the package's postinst never starts it.
DEBIAN_UNIT = "nginx.service"


def key_variable(secret: str) -> str:
    """The nginx variable that is 1 when a request carries `secret`."""
    return "kca_key_" + secret.replace("-", "_")


def key_map_name(secret: str) -> str:
    """The credential's name: the map built from `secret`."""
    return f"{secret}.nginx-map"


def runtime_directory(stack: Stack) -> str:
    return stack.auth_proxy.unit.removesuffix(".service")


def credential_path(stack: Stack, secret: str) -> str:
    """Where systemd hands the map to the proxy's unit. nginx cannot read $CREDENTIALS_DIRECTORY, so the
    path is written out: /run/credentials/UNIT/NAME (systemd.exec(5), Credentials)."""
    return f"/run/credentials/{stack.auth_proxy.unit}/{key_map_name(secret)}"


def proxy_secrets(stack: Stack) -> list[str]:
    return sorted({s.api_key_secret for s in stack.proxied_services()})


def site(stack: Stack, service: Service) -> dict:
    backend_bind, backend_port = stack.listen_address(service)
    return {
        "name": service.name,
        "title": service.title,
        "unit": service.unit,
        "port": service.port,
        "listen": f"{service.bind}:{service.port}",
        "backend": f"{backend_bind}:{backend_port}",
        "key_variable": key_variable(service.api_key_secret),
        "public_paths": list(stack.auth_proxy.public_paths),
    }


def config_context(stack: Stack) -> dict:
    """Everything the nginx template needs, computed here."""
    proxy = stack.auth_proxy
    return {
        "source": SOURCE,
        "unit": proxy.unit,
        "runtime_dir": f"/run/{runtime_directory(stack)}",
        "worker_processes": proxy.worker_processes,
        "max_body": proxy.max_body,
        "read_timeout_s": proxy.read_timeout_s,
        "retry_after_s": proxy.retry_after_s,
        "key_maps": [
            {"secret": name, "variable": key_variable(name), "path": credential_path(stack, name)}
            for name in proxy_secrets(stack)
        ],
        "sites": [site(stack, s) for s in stack.proxied_services()],
    }


def unit_context(stack: Stack) -> dict:
    proxy = stack.auth_proxy
    return {
        "source": SOURCE,
        "backends": [s.unit for s in stack.proxied_services()],
        "config": proxy.config,
        "firewall_unit": FIREWALL_UNIT if stack.firewall.enabled else None,
        "service_user": stack.service_users[proxy.user].name,
        "credentials": [
            f"{key_map_name(name)}:{secret_path(stack, key_map_name(name))}" for name in proxy_secrets(stack)
        ],
        "runtime_directory": runtime_directory(stack),
        "hardening": stack.hardening_for(["auth-proxy"]),
    }


def key_map_script(stack: Stack, secret: str) -> str:
    """A shell snippet that prints the nginx map for `secret` (read on the host). The key is checked to
    be letters and digits first, so it can neither leave the quoted string nor mean anything in the
    regular expression."""
    path = secret_path(stack, secret)
    variable = key_variable(secret)
    # A case-sensitive regular expression: nginx matches a map's plain strings ignoring case.
    layout = f'map $http_authorization ${variable} {{\\n    default 0;\\n    "~^Bearer %s$" 1;\\n}}\\n'
    return f"grep -qx '[A-Za-z0-9]*' {path} && printf '{layout}' \"$(cat {path})\""


@deploy("Authenticating proxy")
def deploy_auth_proxy(stack: Stack) -> None:
    if not stack.proxied_services():
        return
    proxy = stack.auth_proxy
    package = proxy.package

    ops.shell_unless(
        name=f"Mask {DEBIAN_UNIT} (Debian's default site would take port 80)",
        done=f'[ "$(systemctl is-enabled {DEBIAN_UNIT})" = masked ]',
        commands=[f"systemctl mask {DEBIAN_UNIT}", f"systemctl stop {DEBIAN_UNIT} 2>/dev/null || true"],
    )
    ops.packages(name=f"Install {package}", packages=[package])

    # Compared on the host, silently: the test says only whether the map is current, never the key.
    dests = [secret_path(stack, key_map_name(name)) for name in proxy_secrets(stack)]
    current, build = [], []
    for name, dest in zip(proxy_secrets(stack), dests, strict=True):
        built = key_map_script(stack, name)
        test = f'[ -s {dest} ] && [ "$({built})" = "$(cat {dest})" ]'
        current.append(test)
        build.append(f"{test} || {{ umask 077; {{ {built}; }} > {dest}.tmp && mv {dest}.tmp {dest}; }}")
    key_maps = ops.shell_unless(
        name="Build the proxy's key maps from the secrets, readable by root only",
        done=" && ".join([*current, ops.stat_test(dests, "600 root root")]),
        commands=[*build, f"chown root:root {' '.join(dests)}", f"chmod 0600 {' '.join(dests)}"],
    )

    config = ops.install_files(
        name=f"Install {proxy.config}",
        files=[ops.template(CONFIG_TEMPLATE, proxy.config, **config_context(stack))],
    )
    unit = ops.install_files(
        name=f"Install {proxy.unit}",
        files=[ops.template(UNIT_TEMPLATE, f"{stack.paths['units']}/{proxy.unit}", **unit_context(stack))],
    )
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    # Not tied to the GPU: it answers (401, then 503) whichever model runs.
    ops.units_running(name=f"Enable {proxy.unit}", units=[(proxy.unit, True, True)])
    server.shell(
        name=f"Restart {proxy.unit} (its unit changed)",
        commands=[f"systemctl restart {proxy.unit}"],
        _if=unit.did_change,
    )
    # A new credential reaches the unit only on restart; a new configuration on reload (checked first).
    server.shell(
        name=f"Restart {proxy.unit} (a key map changed)",
        commands=[f"systemctl restart {proxy.unit}"],
        _if=lambda: key_maps.did_change() and not unit.did_change(),
    )
    server.shell(
        name=f"Reload {proxy.unit} (its configuration changed)",
        commands=[f"systemctl reload {proxy.unit}"],
        _if=lambda: config.did_change() and not unit.did_change() and not key_maps.did_change(),
    )
