"""Ray job submission: ``stratalens run`` on a remote cluster, and the jobs it started.

The spec travels as the job's ``working_dir`` (a folder holding only the spec, uploaded by
Ray), and the entrypoint runs ``stratalens run spec.yaml`` from there, so the cluster needs
stratalens installed (the k8s image) but not the spec; from a source checkout, pass
``--runtime-env`` with ``py_modules`` naming its packages (Ray uploads them to every
node). Store credentials (``AWS_*``) are passed from this environment as the job's
``env_vars``; they are never printed.

Heads started with ``RAY_AUTH_MODE=token`` reject requests without a bearer token; the
token comes from ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else
Ray's own ``~/.ray/auth_token`` (Ray 2.60 reads the same three), and is sent as the
``Authorization`` header whatever this process's ``RAY_AUTH_MODE``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

STORE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
)
AGENT_WAIT_SECONDS = 60.0
DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
NO_TOKEN = (
    "the Ray head at {address} requires a token; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH "
    "to a file holding it)"
)
BAD_TOKEN = (
    "the Ray head at {address} refused the token found here; set RAY_AUTH_TOKEN (or "
    "RAY_AUTH_TOKEN_PATH) to that cluster's token"
)


class SubmitError(ValueError):
    """Submission failed; the message names the fix."""


def auth_token() -> str | None:
    """The Ray auth token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    for candidate in (Path(path) if path else None, DEFAULT_TOKEN_PATH):
        if candidate is not None and candidate.is_file():
            return candidate.read_text().strip() or None
    return None


def client(address: str):
    """A ``JobSubmissionClient`` for ``address``, authenticated when a token is found."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (AuthenticationError, ConnectionError, RuntimeError) as exc:
        if isinstance(exc, AuthenticationError) or "401" in str(exc):
            message = BAD_TOKEN if token else NO_TOKEN
            raise SubmitError(message.format(address=address)) from None
        raise SubmitError(
            f"cannot reach the Ray job server at {address!r}; pass the dashboard address, "
            "e.g. http://HEAD:8265"
        ) from None


def submit(spec_path: Path, address: str, *, store: str | None = None, runtime_env=None) -> str:
    """Submit ``stratalens run`` of ``spec_path`` as a Ray job; return the job id."""
    env = dict(runtime_env or {})
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(spec_path, Path(folder) / "spec.yaml")
        env.setdefault("working_dir", folder)
        env_vars = {k: os.environ[k] for k in STORE_ENV if os.environ.get(k)}
        env["env_vars"] = {**env_vars, **env.get("env_vars", {})}
        entrypoint = "stratalens run spec.yaml" + (f" --store {store}" if store else "")
        jobs = client(address)
        deadline = time.monotonic() + AGENT_WAIT_SECONDS
        while True:
            try:
                return jobs.submit_job(entrypoint=entrypoint, runtime_env=env)
            except RuntimeError as exc:
                # a head that has just started has no job agent yet (Ray answers 500)
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise SubmitError(
                        f"the Ray job server at {address} refused the job: {exc}"
                    ) from None
                time.sleep(1.0)
