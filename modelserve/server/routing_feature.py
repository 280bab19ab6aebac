"""The routing feature: wiring into the app (see `server/app.py` Feature)."""

from __future__ import annotations

from modelserve.server.app import Feature, Services


def install(services: Services) -> Feature:
    return Feature(name="routing")
