"""A registered generator installs and serves on its own (issue 16, item 2), and
`mdir models translate` keeps every photo's size (item 1), against the real MLflow server.

`mlflow models serve --env-manager local` runs in its own process group (stopped by pgid);
its reply to an image tensor is compared with `Translator.translate_image`. The served
process prints where it imported mdir from: the model's ``code/mdir`` copy, not this
checkout (MLflow puts the model's code path first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY_CYCLEGAN = {"name": "cyclegan", "ngf": 4, "ndf": 4, "n_blocks": 1}
TINY_MDUIT = {
    "name": "mduit", "ngf": 4, "ndf": 4, "n_res_enc": 1, "n_res_dec": 1, "ea_hidden": 8,
    "proj_hidden": 8, "proj_dim": 8, "allow_random_vgg": True,
}  # fmt: skip


def _register(tmp_path: Path, method: dict, data: str) -> str:
    """A randomly initialised tiny generator registered as a new model; its URI."""
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from mdir.methods import build_generator
    from mdir.registry.generators import register_generator
    from mdir.training.config import TrainJobConfig

    cfg = TrainJobConfig.model_validate(
        {"method": method, "data": {"uri": data, "domain_a": ["day"], "domain_b": ["night"]}}
    )
    torch.manual_seed(0)
    w = tmp_path / f"{method['name']}.safetensors"
    sd = build_generator(cfg.method).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(w))
    client = MlflowClient()
    exp = client.get_experiment_by_name("mdir-tests-serving") or client.get_experiment(
        client.create_experiment("mdir-tests-serving")
    )
    run = client.create_run(exp.experiment_id)
    name = f"mdir-serve-{method['name']}-{uuid.uuid4().hex[:6]}"
    uri = register_generator(cfg, str(w), run_id=run.info.run_id, model_name=name)
    client.set_terminated(run.info.run_id)
    return uri


def _wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"mlflow models serve exited {proc.returncode}:\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"mlflow models serve not ready after {timeout}s:\n{log.read_text()}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its worker), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.timeout(600)
def test_registered_model_carries_its_code_and_serves(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    from mdir.dev.procs import free_port
    from mdir.registry.generators import load_translator

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(REPO)  # where MLflow would find mdir's uv.lock, were it looking
    uri = _register(tmp_path, TINY_CYCLEGAN, str(tmp_path / "data"))

    # the logged model: mdir's code inside, pinned runtime deps, no PyPI "mdir"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    reqs = [ln.strip() for ln in (local / "requirements.txt").read_text().splitlines()]
    names = [ln.split("==")[0].split(">")[0].split("<")[0].strip().lower() for ln in reqs]
    assert "mdir" not in names, reqs
    assert {"torch", "safetensors", "numpy", "mlflow", "pydantic"} <= set(names), reqs
    assert all("==" in ln for ln in reqs if ln and not ln.startswith("#")), reqs
    assert (local / "code" / "mdir" / "methods" / "anysize.py").is_file()
    assert (local / "code" / "mdir" / "registry" / "pyfunc_model.py").is_file()
    assert not list((local / "code").rglob("__pycache__"))
    assert "code: code" in (local / "MLmodel").read_text()
    # only requirements.txt decides the environment: no copy of mdir's own uv project
    assert not (local / "uv.lock").exists() and not (local / "pyproject.toml").exists()

    port = free_port()
    log = tmp_path / "serve.log"
    # the scoring server is `uvicorn` from this interpreter's bin directory
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_ready(port, proc, log)
        x = (torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(1)) * 2 - 1).numpy()
        reply = _post(port, {"inputs": x.tolist()})
        served = np.asarray(reply["predictions"], dtype=np.float32)
        tr = load_translator(uri)
        expect = tr.translate_image(torch.from_numpy(x)).numpy()
        assert served.shape == (1, 3, 45, 61)  # any size in, same size out
        assert np.abs(served - expect).max() <= 1e-5
        # the max_pixels param reaches the model: tiled above it, still the same size
        tiled = _post(port, {"inputs": x.tolist(), "params": {"max_pixels": 500}})
        tiled = np.asarray(tiled["predictions"], dtype=np.float32)
        expect_tiled = tr.translate_image(
            torch.from_numpy(x), max_pixels=500, tile=512, overlap=64
        ).numpy()
        assert tiled.shape == served.shape and np.abs(tiled - expect_tiled).max() <= 1e-5
    finally:
        _stop_group(proc)
    # the served process imported mdir from the model's code/ copy, not from this checkout
    lines = [ln for ln in log.read_text().splitlines() if "mdir pyfunc: mdir code from" in ln]
    assert lines, log.read_text()[-3000:]
    path = lines[-1].split("mdir code from ", 1)[1].strip()
    assert path.endswith(os.path.join("code", "mdir", "__init__.py")), path
    assert not path.startswith(str(REPO)), path


def _write(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


@pytest.mark.timeout(600)
def test_models_translate_keeps_size_orientation_and_formats(mlflow_server, tmp_path):
    from typer.testing import CliRunner

    from mdir.cli import app
    from mdir.registry.generators import load_translator
    from mdir.registry.inputs import photo_tensor, to_uint8_hwc

    uri = _register(tmp_path, TINY_CYCLEGAN, str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    rgb = (rng.random((333, 517, 3)) * 255).astype(np.uint8)
    files = {"odd": _write(src / "odd.png", Image.fromarray(rgb))}
    rotated = Image.fromarray(rgb[:40, :60])
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: 60 high × 40 wide
    files["exif"] = _write(src / "exif.jpg", rotated, exif=exif.tobytes(), quality=95)
    g16 = (rng.random((50, 70)) * 65535).astype(np.uint16)
    files["g16"] = _write(src / "g16.png", Image.fromarray(g16))
    rgba = np.concatenate([rgb[:36, :52], np.full((36, 52, 1), 128, np.uint8)], axis=-1)
    files["rgba"] = _write(src / "rgba.png", Image.fromarray(rgba, "RGBA"))
    bad = src / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["models", "translate", uri, *map(str, files.values()), str(bad), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "4 translated images" in res.output and "1 skipped" in res.output
    sizes = {k: Image.open(out / f"{p.stem}_translated.png").size for k, p in files.items()}
    assert sizes == {"odd": (517, 333), "exif": (40, 60), "g16": (70, 50), "rgba": (52, 36)}
    # the files are the library's translation, quantised once
    tr = load_translator(uri)
    for p in files.values():
        want = to_uint8_hwc(tr.translate_image(photo_tensor(p)))
        got = np.asarray(Image.open(out / f"{p.stem}_translated.png").convert("RGB"))
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, p
    # tiles above --max-pixels: same size out
    res = CliRunner().invoke(
        app, ["models", "translate", uri, str(files["odd"]), "-o", str(tmp_path / "tiled"),
              "--max-pixels", "40000", "--tile", "128", "--overlap", "32"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "tiled" / "odd_translated.png").size == (517, 333)
    bad_args = CliRunner().invoke(
        app, ["models", "translate", uri, str(files["odd"]), "-o", str(out), "--tile", "32"]
    )
    assert bad_args.exit_code == 2 and "--overlap" in bad_args.output


@pytest.mark.timeout(600)
def test_mduit_reference_from_a_dataset_condition(mlflow_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mdir.cli import app
    from mdir.data.synth import synthesize
    from mdir.registry.generators import load_translator
    from mdir.registry.inputs import draw_reference, photo_tensor, to_uint8_hwc

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    data = str(tmp_path / "synth")
    synthesize(data, places=3, size=32, seed=0, poses_per_place=2, conditions=["day", "night"])
    uri = _register(tmp_path, TINY_MDUIT, data)
    src = _write(
        tmp_path / "day.png",
        Image.fromarray((np.random.default_rng(1).random((45, 70, 3)) * 255).astype(np.uint8)),
    )
    # seeded: the same seed draws the same night row; the row is a night image
    ref, row = draw_reference(data, "night", seed=3)
    assert draw_reference(data, "night", seed=3)[1] == row
    from mdir.data.manifest import read_manifest
    from mdir.data.shards import read_all

    t = read_all(read_manifest(data), ["id", "condition"]).to_pydict()
    assert t["condition"][t["id"].index(row)] == "night"

    out = tmp_path / "out"
    args = ["models", "translate", uri, str(src), "-o", str(out)]
    res = CliRunner().invoke(
        app, [*args, "--reference-condition", "night", "--dataset", data, "--seed", "3"]
    )
    assert res.exit_code == 0, res.output
    assert f"row {row}" in res.output
    got = np.asarray(Image.open(out / "day_translated.png").convert("RGB"))
    want = to_uint8_hwc(load_translator(uri).translate_image(photo_tensor(src), ref))
    assert got.shape == (45, 70, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # the pyfunc takes any size too: images [B,3,H,W] with a reference of another size
    import mlflow

    x = photo_tensor(src)[None].numpy()
    y = mlflow.pyfunc.load_model(uri).predict({"images": x, "reference": ref[None].numpy()})
    expect = load_translator(uri).translate_image(torch.from_numpy(x), ref).numpy()
    assert y.shape == (1, 3, 45, 70) and np.abs(y - expect).max() <= 1e-5
    # clear errors: no reference, unknown condition, condition without dataset
    for extra, msg in (
        ([], "--reference"),
        (["--reference-condition", "dusk", "--dataset", data], "dusk"),
        (["--reference-condition", "night"], "--dataset"),
    ):
        r = CliRunner().invoke(app, [*args, *extra])
        assert r.exit_code == 2 and msg in r.output, (extra, r.output)
