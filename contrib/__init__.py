"""Integrations for serverless platforms and web frameworks."""
