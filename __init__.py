"""lifelong: a service that learns continually from an event stream."""

__version__ = "0.1.0"
