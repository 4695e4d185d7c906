"""What every local service shares: the pids and process group it was started with, a JSON
state file (written atomically) that lets another process stop exactly that, and ownership
(a service found running but not started by us is never stopped)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from mdir.dev.procs import group_pids, pid_alive, terminate

S = TypeVar("S", bound="Service")


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temp file + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The JSON state file at ``path`` or None (missing or unreadable)."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Service:
    """Common fields: what we started (pids, pgid), where it logs, whether we own it."""

    state_file: str
    pids: list[int] = field(default_factory=list)
    pgid: int | None = None
    log: str = ""
    owned: bool = True  # False: found running, not started by us → stop() leaves it alone
    kind: str = ""

    @classmethod
    def from_state(cls: type[S], data: dict[str, Any]) -> S:
        """The handle a state file describes (unknown keys from other versions ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and k != "kind"})

    @classmethod
    def reuse(
        cls: type[S], state_file: str | Path, accept: Callable[[S], bool] = lambda s: True
    ) -> S | None:
        """The service a state file describes when it answers its health check (and
        `accept`); a stale one is stopped (leftovers of its group killed, file dropped)."""
        old = load_state(state_file)
        if not old:
            return None
        srv = cls.from_state(old)
        if srv.healthy() and accept(srv):
            return srv
        srv.stop()
        return None

    def save(self) -> None:
        """Write the state file (only for services we own)."""
        if self.owned:
            write_state(Path(self.state_file), asdict(self))

    def alive_pids(self) -> list[int]:
        """Pids of this service that are still running (own pids and process group)."""
        pids = [p for p in self.pids if pid_alive(p)]
        if self.pgid:
            pids += [p for p in group_pids(self.pgid) if p not in pids]
        return pids

    @property
    def url(self) -> str:
        """Where a person looks at the service (endpoint, UI or dashboard)."""
        return ""

    def healthy(self) -> bool:
        """Whether the service answers (each kind has its own check)."""
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> None:
        """Stop what we started (nothing if ``owned`` is False) and remove the state file."""
        if not self.owned:
            return
        terminate(list(self.pids), self.pgid, timeout=timeout)
        with contextlib.suppress(FileNotFoundError):
            Path(self.state_file).unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
