"""Export a registered generator to ONNX or a `torch.export` program, with a parity check.

Both formats take [-1, 1] float32 NCHW ``images`` with dynamic height and width (a method
whose spec ``needs_reference``, i.e. MDUIT, takes a second input ``reference``: one target
appearance image [1, 3, H_r, W_r], broadcast over the batch, with its own dynamic size) and
return ``translated`` of the input's shape.

Exporters (torch 2.14, checked offline):

* ONNX: the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, needs
  ``onnxscript``). The TorchScript-based one (``dynamo=False``) exports pix2pix and
  CycleGAN, but refuses MDUIT's E_a at a dynamic size (``adaptive_avg_pool2d``: "input size
  not accessible"), so it cannot give parity at dynamic sizes for every method.
  The batch is dynamic when the graph allows it; MDUIT's per-image appearance filter W_t is
  one grouped convolution with B·C groups (`mdir.models.mduit.appearance_conv`), and ONNX
  needs a static ``group``, so there the batch is fixed at 1 (recorded in ``export.json``).
* ``.pt2``: ``torch.export.export`` with dynamic batch, height and width, saved with
  ``torch.export.save``; load it back with ``torch.export.load(path).module()``.

`export_model` writes ``<DIR>/<name>-v<version>.<onnx|pt2>`` and ``<DIR>/export.json`` (inputs,
dynamic dimensions, source model, measured parity), each atomically (temporary name, then
rename), and can log both to the model version's MLflow run under ``export/<format>/``.
Parity = max |exported − eager| over the outputs for random inputs at `PARITY_SIZES`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mdir.registry.generators import Translator, load_translator

ExportFormat = Literal["onnx", "pt2"]
FORMATS: tuple[str, ...] = ("onnx", "pt2")
#: (height, width) of the parity check: the training size and a non-square larger one
PARITY_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (512, 384))
#: size of the example inputs traced (any multiple of every generator's stride works)
EXAMPLE_SIZE = (256, 256)
OUTPUT_NAME = "translated"
METADATA_NAME = "export.json"

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exporter refused the generator, or a needed package is missing."""


@dataclass
class ExportResult:
    """What `export_model` wrote and measured (also written as ``export.json``)."""

    path: str
    format: str
    model_uri: str
    version: str | None
    method: str
    inputs: list[str]
    dynamic: dict[str, list[str]]
    parity: dict[str, float | str] = field(default_factory=dict)
    #: the exported graph is the network in eval mode (deterministic); a method whose
    #: reference translates in train mode (pix2pix: dropout on) is said so in `note`
    network_mode: str = "eval"
    note: str | None = None
    torch_version: str = torch.__version__
    seconds: float = 0.0
    logged_to: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def input_names(translator: Translator) -> list[str]:
    """``images`` (+ ``reference`` when the method translates towards a reference)."""
    return ["images", "reference"] if translator.needs_reference else ["images"]


def example_inputs(
    translator: Translator, height: int, width: int, batch: int, seed: int = 0
) -> tuple[Tensor, ...]:
    """Random [-1, 1] inputs; the reference (if any) is one image [1, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    if not translator.needs_reference:
        return (x,)
    return x, torch.rand(1, 3, height, width, generator=g) * 2 - 1


def _dynamic_shapes(names: list[str], dynamic_batch: bool) -> tuple[dict[int, object], ...]:
    dyn = torch.export.Dim.DYNAMIC
    shapes: list[dict[int, object]] = []
    for n in names:
        d: dict[int, object] = {2: dyn, 3: dyn}
        if n == "images" and dynamic_batch:
            d[0] = dyn
        shapes.append(d)
    return tuple(shapes)


def _describe(names: list[str], dynamic_batch: bool) -> dict[str, list[str]]:
    return {
        n: (["batch"] if n == "images" and dynamic_batch else []) + ["height", "width"]
        for n in names
    }


def _atomic_target(path: Path) -> Path:
    """A temporary name beside `path` (same directory, so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _export_onnx(translator: Translator, path: Path, dynamic_batch: bool) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's backend)
    except ImportError as e:
        raise ExportError(
            "ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
            "install mdir[export] (`make install` does)"
        ) from e
    names = input_names(translator)
    args = example_inputs(translator, *EXAMPLE_SIZE, 2 if dynamic_batch else 1)
    tmp = _atomic_target(path)
    try:
        torch.onnx.export(
            translator.generator,
            args,
            str(tmp),
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_shapes(names, dynamic_batch),
            dynamo=True,
            external_data=False,  # one self-contained file
            verbose=False,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export_pt2(translator: Translator, path: Path, dynamic_batch: bool) -> None:
    names = input_names(translator)
    args = example_inputs(translator, *EXAMPLE_SIZE, 2 if dynamic_batch else 1)
    program = torch.export.export(
        translator.generator, args, dynamic_shapes=_dynamic_shapes(names, dynamic_batch)
    )
    tmp = _atomic_target(path)
    try:
        torch.export.save(program, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_EXPORTERS = {"onnx": _export_onnx, "pt2": _export_pt2}


def export_generator(translator: Translator, fmt: ExportFormat, path: Path) -> bool:
    """Write `translator`'s generator to `path`; returns whether the batch is dynamic.

    The batch is tried dynamic first and fixed at 1 when the exporter refuses it (MDUIT in
    ONNX, see the module doc)."""
    if fmt not in _EXPORTERS:
        raise ValueError(f"--format: unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    translator.generator.eval()
    try:
        _EXPORTERS[fmt](translator, path, True)
        return True
    except ExportError:
        raise
    except Exception as first:
        log.info("%s export with a dynamic batch failed (%s); fixing the batch at 1", fmt, first)
        try:
            _EXPORTERS[fmt](translator, path, False)
        except Exception as e:
            raise ExportError(f"{fmt} export of {translator.model_uri} failed: {e}") from e
        return False


def load_runner(fmt: ExportFormat, path: Path):
    """A callable ``(*inputs as float32 numpy) -> numpy output`` over the exported file:
    an ONNX Runtime CPU session, or the `torch.export.load`-ed program."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*arrays: np.ndarray) -> np.ndarray:
            return session.run(None, dict(zip(names, arrays, strict=True)))[0]

        return run_onnx
    module = torch.export.load(str(path)).module()

    def run_pt2(*arrays: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(a) for a in arrays)).numpy()

    return run_pt2


def parity(
    translator: Translator,
    fmt: ExportFormat,
    path: Path,
    sizes: tuple[tuple[int, int], ...] = PARITY_SIZES,
    batch: int = 1,
) -> dict[str, float | str]:
    """``{"HxW": max |exported − eager|}`` per size; a size the network itself refuses
    (e.g. a U-Net whose depth needs a larger multiple) is reported as a string instead."""
    run = load_runner(fmt, path)
    out: dict[str, float | str] = {}
    for h, w in sizes:
        key = f"{h}x{w}"
        inputs = example_inputs(translator, h, w, batch, seed=h * 7919 + w)
        try:
            eager = _eager_eval(translator, inputs).cpu().numpy()
        except (ValueError, RuntimeError) as e:
            out[key] = f"not checked: the eager network refuses this size ({e})"
            continue
        exported = run(*(t.numpy() for t in inputs))
        if exported.shape != eager.shape:
            raise ExportError(f"{key}: exported output {exported.shape} ≠ eager {eager.shape}")
        out[key] = float(np.abs(exported - eager).max())
    return out


@torch.no_grad()
def _eager_eval(translator: Translator, inputs: tuple[Tensor, ...]) -> Tensor:
    """The eager network as exported: eval mode, whatever the method's test-time mode."""
    gen = translator.generator
    was = gen.training
    gen.eval()
    try:
        return gen(*inputs)
    finally:
        gen.train(was)


def _write_atomic(path: Path, text: str) -> None:
    tmp = _atomic_target(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_model(
    model_uri: str,
    fmt: ExportFormat,
    out_dir: str | os.PathLike[str],
    *,
    check: bool = True,
    log_to_run: bool = False,
    translator: Translator | None = None,
) -> ExportResult:
    """Export ``models:/NAME@ALIAS`` (or ``/VERSION``) to `out_dir`; see the module doc."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    tr = translator or load_translator(model_uri)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = model_uri.split(":/", 1)[-1].split("@")[0].split("/")[0]
    path = out / f"{stem}-v{tr.version or 'local'}.{fmt}"
    t0 = time.perf_counter()
    dynamic_batch = export_generator(tr, fmt, path)
    result = ExportResult(
        path=str(path),
        format=fmt,
        model_uri=model_uri,
        version=tr.version,
        method=tr.method,
        inputs=input_names(tr),
        dynamic=_describe(input_names(tr), dynamic_batch),
        seconds=round(time.perf_counter() - t0, 2),
    )
    from mdir.methods.specs import spec_of

    if spec_of(tr.method_config).inference_train_mode(tr.method_config):
        result.note = (
            f"{tr.method} translates in train mode at test time (method.test_mode=train: "
            "dropout on, batch statistics); the exported graph is the deterministic eval-mode "
            "network"
        )
        log.warning("%s", result.note)
    if check:
        result.parity = parity(tr, fmt, path)
    if log_to_run:
        if not tr.run_id:
            raise ExportError(f"--log-to-run: {model_uri} has no MLflow run to log to")
        result.logged_to = f"runs:/{tr.run_id}/export/{fmt}"
    meta = out / METADATA_NAME
    _write_atomic(meta, result.to_json() + "\n")
    if log_to_run:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for p in (path, meta):
            client.log_artifact(tr.run_id, str(p), artifact_path=f"export/{fmt}")
    return result


__all__ = [
    "FORMATS",
    "PARITY_SIZES",
    "ExportError",
    "ExportResult",
    "export_generator",
    "export_model",
    "load_runner",
    "parity",
]
