"""Services by state file: rebuild the handle a state file describes and stop it (what
``python -m mdir.demo down`` and other processes use to stop exactly what was started)."""

from __future__ import annotations

from pathlib import Path

from mdir.dev.mlflow_server import MLflowServer
from mdir.dev.ray_head import RayHead
from mdir.dev.s3 import S3Server
from mdir.dev.service import Service, load_state

#: The ``kind`` field of a state file → its handle class.
KINDS: dict[str, type[Service]] = {"s3": S3Server, "mlflow": MLflowServer, "ray": RayHead}


def service_from_state(state_file: str | Path) -> Service | None:
    """The service a state file describes, or None (no file, unreadable, unknown kind)."""
    data = load_state(state_file)
    cls = KINDS.get(str((data or {}).get("kind", "")))
    return None if cls is None or data is None else cls.from_state(data)


def stop_from_state(state_file: str | Path) -> bool:
    """Stop the service described by a state file; False when there was nothing to stop."""
    svc = service_from_state(state_file)
    if svc is None:
        return False
    svc.stop()
    return True
