"""The HTTP query service: ``create_app(settings)``, run by ``stratalens serve``."""

from services.api.app import create_app
from services.api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
