"""An embedded nginx, for the download offload's tests and `make soak`: the service never
starts one itself (in production nginx is yours, configured from deploy/nginx/)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from orchestrator.embedded import _HTTP_PROBE, EmbeddedError, _Server

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def nginx_binary() -> str | None:
    """The nginx executable on PATH or in /usr/sbin (Debian's place), else None."""
    debian = "/usr/sbin/nginx"
    return shutil.which("nginx") or (debian if os.access(debian, os.X_OK) else None)


def render_template(text: str, values: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` replaced by `values[NAME]`, as envsubst does.

    Other `$` forms (nginx's own `$variables`) are left alone; a `${NAME}` with no value is an
    error naming it, since nginx would refuse it as an unknown variable anyway.
    """
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise EmbeddedError(f"the template needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


class EmbeddedNginx(_Server):
    """An nginx master process in the foreground, its config, logs and temp files in `data_dir`.

    `site` is http-context configuration (deploy/nginx/ota-offload.conf.template rendered with
    `render_template`) in which `${LISTEN}` is still to be filled: the port is chosen at start.
    """

    _scheme = "http"
    _probe = _HTTP_PROBE

    def __init__(
        self, data_dir: Path, site: str, *, workers: int = 1, host: str = "127.0.0.1"
    ) -> None:
        super().__init__("nginx", data_dir, host)
        self.site = site
        self.workers = workers
        self._nginx = nginx_binary()

    def _argv(self, port: int) -> list[str]:
        if self._nginx is None:
            raise EmbeddedError(
                "nginx is not on PATH or in /usr/sbin; install the nginx package (make system-deps)"
            )
        data_dir = self.data_dir.resolve()
        host = f"[{self.host}]" if ":" in self.host else self.host
        site_path = data_dir / "site.conf"
        site_path.write_text(render_template(self.site, {"LISTEN": f"{host}:{port}"}))
        temp = [
            f"{kind}_temp_path {data_dir}/temp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ]
        lines = [
            "daemon off;",
            f"worker_processes {self.workers};",
            f"pid {data_dir}/nginx.pid;",
            f"error_log {self.log_path.resolve()} notice;",
            "events { worker_connections 4096; }",
            "http {",
            "    access_log off;",
            "    default_type application/octet-stream;",
            *(f"    {line}" for line in temp),
            f"    include {site_path};",
            "}",
        ]
        if os.geteuid() == 0:  # else nginx's workers run as `nobody`, who can't read data_dir
            lines.insert(0, "user root;")
        (data_dir / "temp").mkdir(exist_ok=True)
        config_path = data_dir / "nginx.conf"
        config_path.write_text("\n".join(lines) + "\n")
        # -e: errors before the config is read go here too, not to /var/log/nginx.
        return [
            self._nginx,
            "-p",
            f"{data_dir}/",
            "-c",
            str(config_path),
            "-e",
            str(self.log_path.resolve()),
        ]
