"""The HTTP layer of workflow-graph: `create_app(runtime)` gives the QuartTrio app."""

from .app import create_app

__all__ = ["create_app"]
