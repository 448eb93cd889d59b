"""The WSGI entry point for gunicorn: ``gunicorn hsmca.wsgi:app`` (config from ``HSMCA_HOME``)."""

from web import create_app

app = create_app()
