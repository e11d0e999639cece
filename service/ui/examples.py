"""The example browser (built next)."""

from litestar.handlers import HTTPRouteHandler

route_handlers: list[HTTPRouteHandler] = []
