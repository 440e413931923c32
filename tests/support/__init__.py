"""Helpers shared by several test modules (real PostgreSQL clusters, ...)."""
