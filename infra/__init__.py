"""Deployment and local-run tooling: the local stack and the web page configuration."""
