"""Where the search runs: embedded local Ray (the default) or an existing cluster (`--address`).

The local cluster's dashboard listens on 127.0.0.1 only, and Ray's token authentication is left
to Ray, whose default for a new local cluster is on (`RAY_AUTH_MODE` unset; setting it here would
not reach Ray's already-loaded config in this process): the dashboard then asks for the token,
which `ray get-auth-token` prints; API clients send it as `Authorization: Bearer <token>`.
Joining a cluster needs the same token the cluster was started with (`RAY_AUTH_TOKEN`,
`RAY_AUTH_TOKEN_PATH` or ~/.ray/auth_token), exactly as `ray status` does.
"""

from __future__ import annotations

import os
from typing import Any

import ray

AUTH_MODE_ENV = "RAY_AUTH_MODE"


class ClusterError(RuntimeError):
    """The Ray cluster named by --address cannot be joined."""


def connect(address: str | None) -> Any:
    """Start embedded local Ray (address None) or join an existing cluster; returns Ray's context."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return ray.get_runtime_context()
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    if address is None:
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
    try:
        return ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        ray.shutdown()
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"--address {address}: cannot join the Ray cluster ({detail})") from None


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
