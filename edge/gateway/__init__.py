"""The HTTP gateway: the seed's JSON API in front of the gRPC decision server (see `app`)."""

from .app import Gateway, create_app, run_gateway, start_gateway

__all__ = ["Gateway", "create_app", "run_gateway", "start_gateway"]
