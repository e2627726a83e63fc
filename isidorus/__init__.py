"""isidorus: host libre services for a family, friends or an association on one server."""

__version__ = "0.1.0"
