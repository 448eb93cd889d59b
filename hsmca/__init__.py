"""Composition roots: CLI, WSGI entry point, scheduler wiring."""
