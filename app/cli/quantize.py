"""``app quantize ...``: INT4 variants of the fine-tuned model, their analysis and accuracy drop."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from app.cli.common import ConfigOpt, SetOpt, console, handled, load, run_stage

quantize_app = typer.Typer(help="INT4 quantization (AWQ, GPTQ via llm-compressor; QAT): run, list, show.",
                           no_args_is_help=True)


@quantize_app.command("run")
@handled
def quantize_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Quantize the fine-tuned model (quantize.methods, plus QAT), evaluate the variants, write the report."""
    console.print_json(data=run_stage("quantize", config, set_))


@quantize_app.command("list")
@handled
def quantize_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """INT4 models in the store: method, scheme, source, size against the source."""
    from app.model_store import model_store

    cfg = load(config, set_)
    table = Table("model", "method", "scheme", "group", "source", "MiB", "vs source", "quantize run", "created")
    store = model_store(cfg)
    for m in store.list():
        if m.kind != "quantized":
            continue
        sizes = m.manifest.get("sizes", {})
        mib = sizes.get("safetensors_bytes", 0) / 2**20
        try:
            src = store.get(m.manifest.get("source_model", ""))
            src_bytes = sum(f["bytes"] for n, f in src.manifest.get("files", {}).items() if n.endswith(".safetensors"))
            ratio = f"{sizes.get('safetensors_bytes', 0) / src_bytes:.0%}" if src_bytes else "-"
        except Exception:  # noqa: BLE001 - the source may have been removed since
            ratio = "-"
        table.add_row(m.name, str(m.manifest.get("method")), str(m.manifest.get("scheme")),
                      str(m.manifest.get("group_size")), str(m.manifest.get("source_model")), f"{mib:.1f}", ratio,
                      str(m.manifest.get("quantize_run")), str(m.manifest.get("created")))
    console.print(table)


@quantize_app.command("show")
@handled
def quantize_show(name: str = typer.Argument(..., help="A quantized store entry or a quantize run name."),
                  config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """One INT4 model's record (recipe, calibration hash, environment, sizes), or a run's summary."""
    from app.model_store import ModelStoreError, model_store
    from app.quantize.run import quantize_root

    cfg = load(config, set_)
    run_dir = quantize_root(cfg) / name
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.pop("analysis", None)
        console.print_json(data=summary)
        return
    stored = model_store(cfg).get(name)
    if stored.kind != "quantized":
        raise ModelStoreError(f"{name!r} is a {stored.kind} model, not a quantized one (see `app quantize list`)")
    manifest = dict(stored.manifest)
    manifest.pop("files", None)
    console.print_json(data={"path": str(stored.path), **manifest})
