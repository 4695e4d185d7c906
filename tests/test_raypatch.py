"""Canary for `mdir.raypatch`: the private Ray names, parameters and behaviour it relies on.

Each test fails when a Ray upgrade renames, removes or changes what mdir binds to, before a
training job or `ray start` hangs on it (see the module docstring for why each is needed).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import uuid

import pytest

from mdir import raypatch

ray_services = pytest.importorskip("ray._private.services")


def test_start_raylet_still_takes_the_parameters_we_bind_by_name():
    params = inspect.signature(ray_services.start_raylet).parameters
    missing = [p for p in (*raypatch.NODE_PARAMS, *raypatch.AGENT_PORT_PARAMS) if p not in params]
    assert not missing, f"ray._private.services.start_raylet lost {missing}"


def test_get_node_and_resolve_ip_for_localhost_still_exist():
    assert list(inspect.signature(ray_services.get_node).parameters) == ["gcs_address", "node_id"]
    assert ray_services.resolve_ip_for_localhost("127.0.0.1") in ("127.0.0.1", "localhost") or (
        ray_services.resolve_ip_for_localhost("127.0.0.1")  # rewritten on Linux: an address
    )


def test_persisted_agent_ports_are_what_the_raylet_reads(tmp_path):
    """`persist_agent_ports` writes the files the raylet waits for: read back with Ray's own
    reader (`wait_for_persisted_port`) under Ray's own file name."""
    from ray._raylet import get_port_filename, wait_for_persisted_port

    node_id = uuid.uuid4().hex + uuid.uuid4().hex[:24]  # 56 hex chars, like a NodeID
    ports = dict(zip(raypatch.AGENT_PORT_PARAMS, (41001, 41002, 41003, 41004), strict=True))
    raypatch.persist_agent_ports(str(tmp_path), node_id, {**ports, "metrics_export_port": 0})
    names = raypatch.agent_port_names()
    assert set(names) == set(raypatch.AGENT_PORT_PARAMS)
    for param, port in ports.items():
        f = tmp_path / get_port_filename(node_id, names[param])
        if param == "metrics_export_port":  # falsy port: skipped
            assert not f.exists()
            continue
        assert f.exists()
        assert wait_for_persisted_port(str(tmp_path), node_id, names[param], 1000) == port


def test_prewrite_patch_writes_port_files_then_calls_the_original(tmp_path, monkeypatch):
    """The patched `start_raylet` binds the real signature, writes the port files, and
    passes every argument on unchanged."""
    seen = {}

    def fake_orig(*a, **kw):
        seen["args"], seen["kw"] = a, kw
        return "raylet-proc"

    sig = inspect.signature(ray_services.start_raylet)
    fake_orig.__signature__ = sig  # type: ignore[attr-defined]
    monkeypatch.setattr(ray_services, "start_raylet", fake_orig)
    raypatch.prewrite_agent_ports_before_raylet()
    node_id = "ab" * 28
    kw = {p.name: None for p in sig.parameters.values() if p.default is inspect.Parameter.empty}
    kw.update(session_dir=str(tmp_path), node_id=node_id, dashboard_agent_listen_port=42001,
              metrics_agent_port=42002, metrics_export_port=42003, runtime_env_agent_port=42004)  # fmt: skip
    assert ray_services.start_raylet(**kw) == "raylet-proc"
    assert seen["kw"] == kw
    from ray._raylet import wait_for_persisted_port

    name = raypatch.agent_port_names()["dashboard_agent_listen_port"]
    assert wait_for_persisted_port(str(tmp_path), node_id, name, 1000) == 42001


def test_patient_get_node_retries_runtime_errors_until_success(monkeypatch):
    calls = []

    def flaky(gcs_address, node_id):
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("node not registered yet")
        return {"node": node_id}

    monkeypatch.setattr(ray_services, "get_node", flaky)
    monkeypatch.setattr(raypatch.time, "sleep", lambda s: None)
    raypatch.patient_get_node(timeout_s=60)
    assert ray_services.get_node("127.0.0.1:1", "n1") == {"node": "n1"} and len(calls) == 3


def test_constants_are_read_from_the_environment_at_import_and_patchable():
    """`ENABLE_RAY_CLUSTER` and `RAY_ENABLE_UV_RUN_RUNTIME_ENV` are computed from their
    variables when ray is imported (so setting the variable first works) and are what
    `set_cluster_mode` / `set_uv_hook` change afterwards."""
    code = (
        "import ray._private.ray_constants as c\n"
        "from mdir import raypatch\n"
        "before = (c.ENABLE_RAY_CLUSTER, c.RAY_ENABLE_UV_RUN_RUNTIME_ENV)\n"
        "raypatch.set_cluster_mode(True); raypatch.set_uv_hook(True)\n"
        "print(before, (c.ENABLE_RAY_CLUSTER, c.RAY_ENABLE_UV_RUN_RUNTIME_ENV))\n"
    )
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(False, False) (True, True)"


def test_auth_config_refresh_picks_up_a_token_set_after_import(tmp_path):
    """`refresh_auth_config` makes an imported ray see RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH
    set later: the auth header Ray's HTTP clients add changes from none to our token."""
    token = uuid.uuid4().hex
    (tmp_path / "tok").write_text(token)
    code = (
        "import os\n"
        "from ray._private.authentication.http_token_authentication import "
        "get_auth_headers_if_auth_enabled as h\n"
        "from mdir import raypatch\n"
        "before = h({})\n"
        f"os.environ.update(RAY_AUTH_MODE='token', RAY_AUTH_TOKEN_PATH={str(tmp_path / 'tok')!r})\n"
        "stale = h({})\n"
        "raypatch.refresh_auth_config()\n"
        "after = {k.lower(): v for k, v in h({}).items()}\n"
        "print(repr(before)); print(repr(stale)); print(after.get('authorization', ''))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
    env["RAY_AUTH_MODE"] = "disabled"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    before, stale, after = out.stdout.strip().splitlines()[-3:]
    assert before == stale == "{}"  # Ray's cached config ignores the late variables...
    assert after == f"Bearer {token}"  # ...until refreshed


def test_uv_run_cmdline_is_none_outside_uv_run():
    # pytest here is not a descendant of `uv run` when run as .venv/bin/pytest; under
    # `make test` (uv run) it is a command line that names uv
    got = raypatch.uv_run_cmdline()
    assert got is None or any("uv" in part for part in got)
