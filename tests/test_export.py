"""`mdir models export`: a registered (tiny, untrained) pix2pix, CycleGAN and MDUIT exported
to ONNX and to a `torch.export` program with dynamic height and width; outputs checked here,
independently of the exporter's own report, against eager PyTorch with ONNX Runtime and
`torch.export.load` at 256×256 and 512×384 (max abs diff ≤ 1e-4), at a batch of 2 where the
batch is dynamic; `--log-to-run` puts the file in the model version's MLflow run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.tiny_models import register_tiny

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TOL = 1e-4
SIZES = ((256, 256), (512, 384))


def _inputs(needs_reference: bool, h: int, w: int, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(h + w + batch)
    x = [torch.rand(batch, 3, h, w, generator=g) * 2 - 1]
    if needs_reference:  # a reference of another size than the sources
        x.append(torch.rand(1, 3, h // 2, w, generator=g) * 2 - 1)
    return x


def _run_exported(fmt: str, path: str, inputs: list[torch.Tensor]) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs, strict=True)}
        return s.run(None, feeds)[0]
    program = torch.export.load(path)
    with torch.no_grad():
        return program.module()(*inputs).numpy()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("method", ["pix2pix", "cyclegan", "mduit"])
def test_export_parity(method, mlflow_server, tmp_path, monkeypatch):
    from mdir.cli import app
    from mdir.registry.generators import load_translator

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # no VGG: random E_a
    uri = register_tiny(method, tmp_path)
    tr = load_translator(uri)
    measured: dict[str, float] = {}
    for fmt in ("onnx", "pt2"):
        out = tmp_path / fmt
        res = CliRunner().invoke(
            app, ["models", "export", uri, "--format", fmt, "--out", str(out), "--log-to-run"]
        )
        assert res.exit_code == 0, res.output
        meta = json.loads((out / "export.json").read_text())
        path = meta["path"]
        assert path.endswith(f"-v{tr.version}.{fmt}") and (out / path.split("/")[-1]).is_file()
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
        assert meta["inputs"] == (["images", "reference"] if tr.needs_reference else ["images"])
        assert meta["dynamic"]["images"][-2:] == ["height", "width"]
        # the exporter's own report agrees with the bound
        assert set(meta["parity"]) == {"256x256", "512x384"}
        assert all(isinstance(v, float) and v <= TOL for v in meta["parity"].values()), meta
        assert "parity 512x384" in res.output
        assert meta["network_mode"] == "eval"
        # pix2pix's reference translates in train mode (dropout on): said in export.json
        assert (meta["note"] is not None) == (method == "pix2pix"), meta["note"]
        batch = 2 if "batch" in meta["dynamic"]["images"] else 1
        if fmt == "pt2" or method != "mduit":
            assert batch == 2, f"{fmt} {method}: the batch should stay dynamic"
        for h, w in SIZES:
            x = _inputs(tr.needs_reference, h, w, batch)
            with torch.no_grad():  # the exported graph is the eval-mode network
                eager = tr.generator.eval()(*x).numpy()
            got = _run_exported(fmt, path, x)
            assert got.shape == eager.shape == (batch, 3, h, w)
            diff = float(np.abs(got - eager).max())
            measured[f"{fmt} {h}x{w}"] = diff
            assert diff <= TOL, f"{method} {fmt} {h}x{w}: max abs diff {diff}"
        # logged to the model version's run
        from mlflow import MlflowClient

        names = [a.path for a in MlflowClient().list_artifacts(tr.run_id, f"export/{fmt}")]
        assert f"export/{fmt}/export.json" in names
        assert any(n.endswith(f".{fmt}") for n in names), names
    print(f"\n{method} parity (max abs diff): {measured}")


def test_export_rejects_unknown_format(tmp_path):
    from mdir.cli import app

    res = CliRunner().invoke(
        app, ["models", "export", "models:/x@y", "--format", "tflite", "--out", str(tmp_path)]
    )
    assert res.exit_code != 0
    assert "tflite" in res.output and "onnx" in res.output
