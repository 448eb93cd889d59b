"""Running gunicorn in-process (``hsmca serve``): workers build their own Authority after fork."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class _HsmcaServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported in the worker (no preload): nothing touches the HSM before the fork.
        from hsmca.wsgi import app

        return app


def run_gunicorn(bind: str, workers: int, timeout: int) -> None:
    """Serve ``hsmca.wsgi:app`` with gunicorn until stopped."""
    _HsmcaServer(
        {
            "bind": bind,
            "workers": workers,
            "timeout": timeout,
            "preload_app": False,
            "accesslog": "-",
            "errorlog": "-",
            "proc_name": "hsmca",
            "control_socket_disable": True,  # no socket outside the data directory
            # Access logs never show query strings or headers that might carry tokens.
            "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms',
        }
    ).run()
