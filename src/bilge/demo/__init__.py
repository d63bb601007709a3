"""The demo: a small, realistic, leaky Celery app diagnosed end to end."""
