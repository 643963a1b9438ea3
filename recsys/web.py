"""Web pieces every service shares: API docs that work offline.

FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN, so they are blank offline or behind a
strict firewall. `serve_docs_offline(app)` replaces them with the same pages over assets served by the app
itself (the files the `fastapi-offline` package ships: 2.8 MB installed, MIT, needs nothing but FastAPI).

    >>> app = FastAPI(title="model_a recommender")
    >>> serve_docs_offline(app)
    >>> sorted(route.path for route in app.routes if "doc" in route.path)
    ['/docs', '/docs-assets', '/docs/oauth2-redirect', '/redoc']
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the Swagger UI / ReDoc files are served from.
ASSETS_URL = "/docs-assets"


def docs_assets_dir() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


def serve_docs_offline(app: FastAPI, *, assets_url: str = ASSETS_URL) -> None:
    """Serve `app`'s /docs and /redoc (wherever `app.docs_url` / `app.redoc_url` put them) without a CDN.

    Call once, right after creating the app; its CDN-backed doc pages are replaced, the OpenAPI document is
    untouched.
    """
    replaced = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    app.router.routes[:] = [route for route in app.router.routes if getattr(route, "path", None) not in replaced]
    app.mount(assets_url, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    if app.docs_url is not None:
        oauth2_url = app.swagger_ui_oauth2_redirect_url

        @app.get(app.docs_url, include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{oauth2_url}" if oauth2_url else None,
                swagger_js_url=f"{root}{assets_url}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{assets_url}/swagger-ui.css",
                swagger_favicon_url=f"{root}{assets_url}/favicon.png",
                swagger_ui_parameters=app.swagger_ui_parameters,
            )

        if oauth2_url is not None:

            @app.get(oauth2_url, include_in_schema=False)
            async def swagger_ui_redirect() -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

    if app.redoc_url is not None:

        @app.get(app.redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{assets_url}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{assets_url}/favicon.png",
                with_google_fonts=False,
            )
