"""Celery worker that runs the webhook step of an order workflow."""

__version__ = "0.1.0"
