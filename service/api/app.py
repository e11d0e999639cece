"""The one place the API is wired: routes, auth, dependencies, errors, metrics, limits, OpenAPI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from litestar import Litestar, Router
from litestar.datastructures import State as AppState
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Tag

from service import logs
from service.api import (
    Metrics,
    Services,
    batches,
    builds,
    datasets,
    docs,
    examples,
    finetune,
    health,
    jobs,
    keys,
    models,
    profiles,
    providers,
    targets,
    tools,
    webhooks,
)
from service.api.auth import provide_services, provide_tenant, require_tenant
from service.api.bodies import require_json_body, tools_cap, webhook_cap
from service.api.errors import exception_handlers
from service.api.health import MetricsMiddleware
from service.core.models import load_table
from service.jobs.keys import NOTIFY
from service.metrics import QueueCollector
from service.settings import Settings, get_settings
from service.store.state import State
from service.ui import ui_router


def _version() -> str:
    try:
        return version("tuneset")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="tuneset",
        version=_version(),
        description=(
            "Turns chat conversations into fine-tuning datasets and shows exactly what a model will be "
            "trained on. Every /v1 route needs `Authorization: Bearer <key>` (`tuneset keys create`) and "
            "sees only its tenant's resources. Errors are RFC 9457 problem details "
            "(`application/problem+json`)."
        ),
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="an API key from `tuneset keys create`"
                )
            }
        ),
        tags=[
            Tag(name="datasets", description="Datasets of chat or preference examples."),
            Tag(name="batches", description="Examples pushed into a dataset, checked line by line."),
            Tag(name="builds", description="Validate, repair and account a whole dataset as a job."),
            Tag(name="jobs", description="Job status, events (SSE), cancellation and artifacts."),
            Tag(name="providers", description="OpenAI-compatible providers for uploads and fine-tuning."),
            Tag(
                name="webhooks",
                description="Signed notifications of every job's ending, and their deliveries.",
            ),
            Tag(
                name="profiles",
                description="Model profiles (a tokenizer, the model's chat template, training rules) "
                "and the chat templates a request may name.",
            ),
            Tag(name="tools", description="Synchronous inspection and validation."),
            Tag(name="health", description="Liveness, readiness and metrics."),
            Tag(name="keys", description="API keys, managed with an admin key."),
        ],
        use_handler_docstrings=True,
        path="/schema",
        render_plugins=docs.render_plugins(),
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    services = Services(
        settings=settings,
        state=State.from_url(settings.redis_url, settings.job_retention_s),
        metrics=Metrics(),
        table=load_table(),
    )
    services.metrics.registry.register(
        QueueCollector(services.state.r, [settings.cpu_queue, settings.io_queue], NOTIFY)
    )
    # synchronous tools answer from memory: a body cap of their own, checked before reading
    tools_router = Router(
        path="/",
        route_handlers=[tools.inspect_example, tools.validate_examples],
        request_max_body_size=tools_cap(settings),
    )
    # a profile upload carries a tokenizer file: a body cap of its own
    profiles_router = Router(
        path="/",
        route_handlers=[profiles.create_profile],
        request_max_body_size=profiles.profile_cap(settings),
    )
    v1 = Router(
        path="/v1",
        route_handlers=[
            datasets.DatasetController,
            batches.BatchController,
            examples.ExampleController,
            builds.start_build,
            jobs.JobController,
            finetune.start_fine_tune,
            providers.create_provider,
            providers.list_providers,
            providers.get_provider,
            providers.delete_provider,
            webhooks.WebhookController,
            profiles_router,
            profiles.list_profiles,
            profiles.get_profile,
            profiles.delete_profile,
            profiles.list_templates,
            models.list_models,
            targets.list_targets,
            tools_router,
        ],
        guards=[require_tenant, require_json_body],
        dependencies={"tenant": Provide(provide_tenant, sync_to_thread=False)},
        security=[{"bearer": []}],
    )
    admin = Router(path="/v1", route_handlers=[keys.KeyController], security=[{"bearer": []}])
    hooks = Router(  # signed, no bearer key; anyone can post here, so little is read
        path="/v1",
        route_handlers=[providers.receive_provider_webhook],
        request_max_body_size=webhook_cap(settings),
    )
    app = Litestar(
        route_handlers=[
            v1,
            admin,
            hooks,
            ui_router(),
            docs.assets_router(),
            health.livez,
            health.readyz,
            health.metrics,
        ],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        middleware=[MetricsMiddleware(services.metrics)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),
        state=AppState({"services": services}),
        on_shutdown=[services.close],
        debug=False,
    )
    logs.configure(settings.log_format)  # after Litestar's own logging set-up, which it replaces
    return app
