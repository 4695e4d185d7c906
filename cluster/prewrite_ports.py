"""Start-up helper for cluster/local.sh on overloaded machines (not needed on an idle one).

Ray 2.60's raylet waits a hard-coded ~15 s for its dashboard agent to write port files
(`<session>/dashboard_agent_listen_port_<node_id>`, `metrics_agent_port_...`,
`metrics_export_port_...`, `runtime_env_agent_port_...`) and aborts the node when they are late
("Timed out waiting for file ..."). On 2 cores shared by many test runs the agent's imports alone
take longer than that. local.sh chooses every agent port itself, so the values are known before
the agent exists: this helper waits for the node's raylet to appear (matched by its --temp_dir),
reads its node id and session dir from the command line and writes those files with the chosen
ports, exactly as the agent will when it comes up (same values, same Ray function, through
`mdir.raypatch`, ray-project/ray#65983). The raylet
then connects to the agent with its normal retries (RAY_agent_register_timeout_ms).

Usage: prewrite_ports.py TEMP_DIR TIMEOUT_S listen=P grpc=P export=P runtime_env=P
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# the project's own package, whichever Python $MDIR_RAY names
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mdir.raypatch import persist_agent_ports  # noqa: E402 # the one home of Ray's private helpers

#: Command-line key → the ``start_raylet`` parameter naming that agent port.
PARAMS = {
    "listen": "dashboard_agent_listen_port",
    "grpc": "metrics_agent_port",
    "export": "metrics_export_port",
    "runtime_env": "runtime_env_agent_port",
}


def find_raylet(temp_dir: str) -> tuple[str, str] | None:
    """(session_dir, node_id) of the raylet started with --temp_dir=temp_dir, if it runs."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or not args[0].endswith(b"raylet/raylet"):
            continue
        opts = dict(a.decode().split("=", 1) for a in args[1:] if a.startswith(b"--") and b"=" in a)
        if opts.get("--temp_dir") == temp_dir and "--node_id" in opts:
            return opts["--session_dir"], opts["--node_id"]
    return None


def main(argv: list[str]) -> int:
    temp_dir, timeout = argv[0], float(argv[1])
    ports = {k: int(v) for k, v in (a.split("=", 1) for a in argv[2:])}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_raylet(temp_dir)
        if found:
            session_dir, node_id = found
            persist_agent_ports(session_dir, node_id, {PARAMS[k]: p for k, p in ports.items()})
            return 0
        time.sleep(0.2)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
