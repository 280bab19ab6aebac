"""The one inference path: resolve the route decision, run the version, tell the observers."""
