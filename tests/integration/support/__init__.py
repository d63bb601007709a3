"""Helpers of the integration tests: start and stop real workers, talk to brokers, read bilge's data."""
