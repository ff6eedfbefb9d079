"""Where the search runs: embedded local Ray (the default) or an existing cluster (`--address`).

The local cluster's dashboard listens on 127.0.0.1 only, and Ray's token authentication is left
to Ray, whose default for a new local cluster is on (`RAY_AUTH_MODE` unset; setting it here would
not reach Ray's already-loaded config in this process): the dashboard then asks for the token,
which `ray get-auth-token` prints; API clients send it as `Authorization: Bearer <token>`.
Joining a cluster needs the same token the cluster was started with (`RAY_AUTH_TOKEN`,
`RAY_AUTH_TOKEN_PATH` or ~/.ray/auth_token), exactly as `ray status` does.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray

from search.errors import UserError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
PRESTART_ENV = "RAY_prestart_worker_first_driver"  # a Ray config flag; the raylet reads it from its environment


class ClusterError(UserError, RuntimeError):
    """The Ray cluster named by --address cannot be joined."""


# Seconds a trial's Ray Train workers get to start (Ray's default, 60, is short for a busy node
# importing torch, TerraTorch and Lightning into fresh worker processes).
WORKER_START_TIMEOUT_S = "120"
# Seconds a reused trial actor waits for the previous trial's thread to end (Tune's default, 2, is short for a
# trial releasing its model on a loaded node: past it, Tune fails the next trial instead of waiting).
FUNCTION_THREAD_TIMEOUT_S = "60"


@dataclass(frozen=True)
class Connection:
    """Ray's runtime context, and whether this run started or joined Ray (and so ends its connection)."""

    context: Any
    owned: bool

    def end(self) -> None:
        """Shut down the Ray this run started or joined; a caller's own Ray stays up."""
        if self.owned:
            ray.shutdown()


def connect(address: str | None) -> Connection:
    """Start embedded local Ray (address None) or join an existing cluster.

    A Ray the caller already initialised (a notebook's, a benchmark running several searches, the tests'
    shared one) is used as it is and left running at the end.
    """
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        # Ray's public way to the running Ray's context with its dashboard URL (the runtime context has none); its
        # "called again" notice says nothing to a user whose own ray.init this is.
        notices = logging.getLogger("ray._private.worker")
        level = notices.level
        notices.setLevel(logging.WARNING)
        try:
            return Connection(ray.init(ignore_reinit_error=True), owned=False)
        finally:
            notices.setLevel(level)
    defaults = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": WORKER_START_TIMEOUT_S,
                "TUNE_FUNCTION_THREAD_TIMEOUT_S": FUNCTION_THREAD_TIMEOUT_S}
    env_vars = {name: os.environ.get(name, value) for name, value in defaults.items()}
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    # Ray warns that token authentication is on by default; dashboard_lines says so, with how to get the token.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address is None:
        # Embedded Ray's processes inherit this process's environment, so the settings go there. Ray prestarts
        # one worker per CPU for a new driver, for tasks and actors with an empty runtime environment; Tune
        # gives every trial actor one of its own (env_vars such as PL_DISABLE_FORK, ray/tune/execution/
        # class_cache.py), so those workers never host a trial: they sat idle (0.5 s of CPU each) while the
        # trials' workers started and imported beside them. Ray's switch for that prestart is off here.
        os.environ.update(env_vars)
        os.environ.setdefault(PRESTART_ENV, "0")
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
    else:
        # On a running cluster the job's runtime environment carries them to every process of the search on
        # every node, the Train controllers included, which read the start timeout.
        kwargs["runtime_env"] = {"env_vars": env_vars}
    try:
        return Connection(ray.init(address=address, **kwargs), owned=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        ray.shutdown()
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"--address {address}: cannot join the Ray cluster ({detail})") from None


def probe_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a host:port nobody listens on; ray.init would retry it for minutes."""
    host_port = address.split("://", 1)[-1]
    if address == "auto" or ":" not in host_port:
        return  # 'auto' and bare host names are resolved by Ray itself
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise ClusterError(f"--address {address}: expected 'auto' or HOST:PORT") from None
    except OSError as err:
        raise ClusterError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})") from None


def dashboard_lines(context: Any) -> list[str]:
    """What to tell the user about watching this search in the Ray dashboard."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return ["Ray dashboard: not running on this cluster (start the head with --include-dashboard=true)"]
    lines = [f"Ray dashboard: http://{url}"]
    if os.environ.get(AUTH_MODE_ENV, "token") != "disabled":
        lines.append("  it asks for Ray's token: `ray get-auth-token` prints it "
                     "(API clients: header 'Authorization: Bearer <token>')")
    return lines
