"""The FastAPI application factory: settings in, app out; nothing happens at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from cloud_hub.api.auth import redact_tokens_in_logs
from cloud_hub.api.routes import dashboard, devices, events, health, infer, models, rollouts
from cloud_hub.api.routes.dashboard import SignInRequired, sign_in_redirect
from cloud_hub.service import HubService


def create_app(service: HubService, *, manage: bool = True) -> FastAPI:
    """Build the app around ``service``.

    Args:
        manage: Start the service with the app and stop it with the app.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here, not at import: uvicorn configures its loggers before it starts the app.
        redact_tokens_in_logs()
        if manage:
            service.start()
        try:
            yield
        finally:
            if manage:
                service.stop()

    # Swagger UI at /docs and ReDoc at /redoc from assets that fastapi-offline ships in
    # its wheel, served by the hub itself: both work where no CDN can be reached.
    app = FastAPIOffline(
        title="Cloud hub", version="0.1.0", lifespan=lifespan,
        description="Judges what edge agents escalate, stores events, serves the fleet.",
        static_url="/docs/assets", favicon_url="/docs/assets/favicon.png",
    )
    app.state.service = service
    for module in (health, devices, events, models, rollouts, infer, dashboard):
        app.include_router(module.router)
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    # The TUF repository: metadata and targets are verified by devices, not trusted on
    # transport, so they are served to anyone who asks.
    repository = service.settings.repository_dir
    repository.mkdir(parents=True, exist_ok=True)
    app.mount("/tuf", StaticFiles(directory=repository, check_dir=False), name="tuf")
    return app
