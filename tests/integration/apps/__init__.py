"""Small Celery apps the integration tests run as real workers (under ``bilge run`` or bare)."""
