"""Joining a running Ray cluster (``RAY_ADDRESS``) as Ray 2.60 starts one.

``ray start --head`` turns token authentication on when a token exists where it runs
(``~/.ray/auth_token``, which any earlier ``ray.init()`` creates), or when started with
``RAY_AUTH_MODE=token``. A driver given an explicit address does not turn it on by
itself and is refused (``InvalidAuthToken``). So with a token at hand the trainer asks
for token authentication, which a cluster without authentication accepts as well, and
the recipe connects once before starting the trainer so a refusal is one clear line.
"""

from __future__ import annotations

import os
import subprocess
import sys

from afm_trainer.recipes.common import RecipeError

TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def token_file() -> str:
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")


def has_token() -> bool:
    """Whether Ray would find a token here: a blank RAY_AUTH_TOKEN, or a blank or
    unreadable token file, is none to Ray (token mode then fails with "couldn't find an
    authentication token", even against a cluster without authentication)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    try:
        with open(token_file(), "rb") as f:
            return bool(f.read(1 << 16).strip())
    except OSError:
        return False


def auth_env() -> dict[str, str]:
    """What the trainer's environment needs to join: token authentication when a token is
    at hand and the user has not chosen a mode (``RAY_AUTH_MODE``)."""
    if os.environ.get("RAY_AUTH_MODE") or not has_token():
        return {}
    return {"RAY_AUTH_MODE": "token"}


CONNECT = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
ray.shutdown()
"""


def check_cluster(address: str, env: dict[str, str], timeout_s: float = 120) -> None:
    """Connect to the cluster once, as the trainer will; RecipeError saying what to do if
    it cannot."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", CONNECT, address],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise RecipeError(f"no answer from the Ray cluster at {address} within {timeout_s:.0f} s") from None
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if "InvalidAuthToken" in output or "uthentication" in output:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            token = "RAY_AUTH_MODE=disabled is set here"
        elif has_token():
            token = "the token here was refused"
        else:
            token = f"there is no token here (RAY_AUTH_TOKEN or {token_file()})"
        raise RecipeError(
            f"the Ray cluster at {address} uses token authentication and {token}: copy the head's token "
            f"(`ray get-auth-token` on the head) into RAY_AUTH_TOKEN or {token_file()}, or start the cluster "
            "with RAY_AUTH_MODE=disabled on a trusted network"
        )
    last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
    raise RecipeError(
        f"cannot join the Ray cluster at {address} ({last.strip()[:200]}): is `ray start --head "
        "--port=PORT` running there and the port reachable from here?"
    )
