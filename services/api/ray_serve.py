"""The query service as a Ray Serve deployment: the same FastAPI app, N replicas.

``stratalens serve --ray --replicas N`` runs it on a local Ray (or ``--address``);
the RayService manifest (k8s/rayservice.query.yaml) runs the same application from
the import path ``services.server:app``, which reads ``STRATALENS_STORE`` (and
``STRATALENS_CORS_ORIGINS``) from the environment; ``serve run
services.api.ray_serve:build_app store=s3://bucket/prefix replicas=2`` takes them as
arguments.

Each replica builds the app itself (``serve.ingress`` late-bound), so only the store
and the CORS origins travel to it; the write token is read from the replica's own
``STRATALENS_TOKEN`` (a local Ray started by ``stratalens serve --ray`` inherits it),
so it never enters Serve's configuration.
"""

from __future__ import annotations

from typing import Any

from services.api.settings import ServiceSettings

APP_NAME = "stratalens"
DEPLOYMENT_NAME = "QueryService"  # k8s/rayservice.query.yaml overrides its replicas by name
# CPUs Ray reserves per replica: the app's handlers run in threads and Lance scans
# use their own thread pool, so a replica uses about one core under load.
REPLICA_CPUS = 1.0
# Requests one replica handles at once before Serve queues them.
MAX_ONGOING_REQUESTS = 64


def deployment(settings: ServiceSettings, *, replicas: int = 1, replica_cpus: float = REPLICA_CPUS):
    """The bound Serve application of the query service over ``settings.store`` (and its
    CORS origins; the token comes from each replica's environment)."""
    from ray import serve

    from services.api.app import create_app

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=replicas,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": replica_cpus},
    )
    @serve.ingress()
    class QueryService:
        def __init__(self, store: str, cors_origins: tuple[str, ...]):
            self.settings = ServiceSettings.from_env(store=store, cors_origins=cors_origins or None)

        def __serve_build_asgi_app__(self):
            app = create_app(self.settings)
            app.add_middleware(BytesBodies)
            return app

    return QueryService.bind(settings.store, settings.cors_origins)


class BytesBodies:
    """ASGI middleware: Serve pickles each message from replica to proxy, and memoryview
    bodies (the zero-copy chunks of a streamed answer under uvicorn) do not pickle."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def send_bytes(message) -> None:
            if isinstance(message.get("body"), memoryview):
                message = {**message, "body": bytes(message["body"])}
            await send(message)

        await self.app(scope, receive, send_bytes)


def build_app(args: dict[str, Any]):
    """Application builder for ``serve run`` and RayService manifests.

    ``args``: ``store`` (default: ``STRATALENS_STORE`` or ./stratalens-store),
    ``replicas`` (1), ``replica_cpus`` (1.0), ``cors_origins`` (comma-separated).
    """
    origins = str(args.get("cors_origins") or "")
    settings = ServiceSettings.from_env(
        store=args.get("store"),
        cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()) or None,
    )
    return deployment(
        settings,
        replicas=int(args.get("replicas", 1)),
        replica_cpus=float(args.get("replica_cpus", REPLICA_CPUS)),
    )


def run(
    settings: ServiceSettings,
    *,
    host: str,
    port: int,
    replicas: int = 1,
    replica_cpus: float = REPLICA_CPUS,
    address: str | None = None,
    blocking: bool = True,
) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the service with ``replicas``.

    Connects to the Ray cluster at ``address``, or starts a local one. With
    ``blocking`` it serves until interrupted, then shuts Serve down.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        deployment(settings, replicas=replicas, replica_cpus=replica_cpus),
        name=APP_NAME,
        route_prefix="/",
        blocking=blocking,
    )
