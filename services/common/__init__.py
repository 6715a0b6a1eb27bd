"""Plumbing shared by the three services: settings, events, Kafka, Redis, HTTP, auth."""
