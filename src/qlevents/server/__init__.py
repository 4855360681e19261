"""The ingestion service (needs the ``server`` extra: ``pip install 'qlevents[server]'``)."""

from qlevents.server.app import EventsApp, create_app
from qlevents.server.config import Settings

__all__ = ["EventsApp", "Settings", "create_app"]
