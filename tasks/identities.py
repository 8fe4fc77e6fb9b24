"""One identity per service: a system group and user of the same fixed id for each service unit (and
the authenticating proxy), no login shell, no home. Created before anything that they own. An account
that exists with another id is never renumbered behind the operator's back: the deploy refuses and
says how."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from kca_stack import Stack

from . import ops

NOLOGIN = "/usr/sbin/nologin"
# Debian's home for accounts that have none.
NO_HOME = "/nonexistent"


def wanted_ids(stack: Stack) -> dict[str, int]:
    """Account name -> the uid the data gives it (kca included when it has one)."""
    ids = {identity.name: identity.uid for identity in stack.service_users.values()}
    if stack.user.uid is not None:
        ids[stack.user.name] = stack.user.uid
    return ids


def id_conflicts(stack: Stack, users: dict[str, dict]) -> list[str]:
    """Accounts on the host that hold another id than the data's, or ids the data gives to another
    name. Read before any change."""
    holder_of = {int(details["uid"]): name for name, details in users.items() if details.get("uid") is not None}
    problems = []
    for name, uid in wanted_ids(stack).items():
        existing = users.get(name)
        if existing is not None and int(existing["uid"]) != uid:
            problems.append(
                f"{name} exists with uid {existing['uid']}, the data says {uid}. Fix: stop its services, then "
                f"`usermod -u {uid} {name} && groupmod -g {uid} {name}` and chown what it owns outside its home "
                f"(`find /models -xdev -uid {existing['uid']} -exec chown -h {uid}:{uid} {{}} +`), or change the uid "
                "in group_data/all.py"
            )
        holder = holder_of.get(uid)
        if holder is not None and holder != name:
            problems.append(f"uid {uid}, wanted for {name}, belongs to {holder}. Fix: give {name} a free uid in data")
    return problems


def accounts(stack: Stack) -> list[ops.Account]:
    """kca, then one system account per service identity."""
    kca = ops.Account(stack.user.name, stack.user.uid, stack.user.home, stack.user.shell, create_home=True)
    identities = [
        ops.Account(identity.name, identity.uid, NO_HOME, NOLOGIN, system=True)
        for identity in stack.service_users.values()
    ]
    return [kca, *identities]


@deploy("Service identities")
def deploy_identities(stack: Stack) -> None:
    # Read while planning, on purpose: a refusal comes before the first change.
    problems = id_conflicts(stack, host.get_fact(ops.Passwd))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SystemExit(
            f"{host.name}: refusing to deploy, account ids differ from the data:\n{lines}\nNothing was changed."
        )
    ops.accounts(name="Create kca and one system account per service identity", wanted=accounts(stack))
