"""Training checkpoints: layout, the state file, compatibility checks and names users can give.

A checkpoint is a folder ``<home>/train/<run>/step-NNNNNN/`` holding

- ``trainer_state.json``: step, epoch position, tokens seen, the validation metrics of that step,
  and the fingerprint of what the state means (base model, LoRA shape, ZeRO stage, world size,
  precision);
- ``adapter/``: the LoRA adapter (PEFT format, gathered from all ranks), enough to export;
- ``ds/``: DeepSpeed's own checkpoint (adapter weights, optimizer and scheduler state, one
  optimizer partition per rank), enough to resume exactly.

Every reader checks what it needs and raises :class:`CheckpointError` with the path and the reason
(missing or unreadable file, different LoRA shape, different world size ...), never a traceback
from deep inside torch or DeepSpeed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from app.errors import AppError

# Deferred imports: safetensors is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"
DS_DIR = "ds"
DS_TAG = "state"
RUN_FILE = "run.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(AppError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names it and says why."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def read_state(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, checked for the fields every reader relies on."""
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is incomplete or not a checkpoint: {STATE_FILE} is missing")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {STATE_FILE} is unreadable ({exc})") from None
    missing = [k for k in ("format", "step", "fingerprint", "world_size", "zero_stage", "precision") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {STATE_FILE} lacks {missing}")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {ckpt} has format {state['format']}; this version reads format {FORMAT}")
    return state


def check_adapter(ckpt: Path) -> None:
    """Raise unless the adapter files are present and the weights file is a readable safetensors file."""
    adapter = Path(ckpt) / ADAPTER_DIR
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {ADAPTER_DIR}/{name} is missing")
    try:
        from safetensors import safe_open

        with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
            if not list(f.keys()):
                raise CheckpointError(f"checkpoint {ckpt}: the adapter holds no tensors")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {ADAPTER_DIR}/adapter_model.safetensors "
                              f"cannot be read ({type(exc).__name__}: {exc})") from None


def check_deepspeed_files(ckpt: Path, world_size: int, zero_stage: int) -> None:
    """Raise unless DeepSpeed's files for every rank of ``world_size`` are there."""
    folder = Path(ckpt) / DS_DIR / DS_TAG
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} has no optimizer state ({DS_DIR}/{DS_TAG} missing); "
                              "start from its adapter weights with training.init_weights_only=true")
    names = {p.name for p in folder.iterdir()}
    optim = [n for n in names if n.endswith("optim_states.pt")]
    if len(optim) < (world_size if zero_stage >= 1 else 1):
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: {len(optim)} optimizer partition file(s) for "
                              f"{world_size} rank(s) in {folder}")
    for p in folder.iterdir():
        if p.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {p.name} is empty")


def differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: saved -> wanted' for every leaf that differs (keys missing on one side included)."""
    out = []
    for k in sorted(set(saved) | set(wanted)):
        a, b = saved.get(k, "<absent>"), wanted.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_compatible(ckpt: Path, state: dict[str, Any], fingerprint: dict[str, Any], world_size: int,
                     zero_stage: int, precision: str, weights_only: bool) -> None:
    """Raise CheckpointError naming every setting that stops ``state`` from loading into this run.

    Adapter weights need the same base model and LoRA shape; the full state (optimizer partitions)
    also needs the same world size, ZeRO stage and precision.
    """
    problems = differences(state["fingerprint"], fingerprint)
    if not weights_only:
        for key, now in (("world_size", world_size), ("zero_stage", zero_stage), ("precision", precision)):
            if state[key] != now:
                problems.append(f"{key}: {state[key]!r} in the checkpoint, {now!r} now")
    if problems:
        hint = ("" if weights_only or not _only_layout(problems) else
                "; to continue with a new layout, start from its adapter weights: training.init_weights_only=true")
        raise CheckpointError(f"checkpoint {ckpt} is incompatible with this run: " + "; ".join(problems) + hint)


def _only_layout(problems: list[str]) -> bool:
    return all(p.split(":")[0] in ("world_size", "zero_stage", "precision") for p in problems)


SNAPSHOT = "checkpoint_manager_snapshot.json"


def _snapshot(run_dir: Path) -> dict[str, Any] | None:
    """Ray Train's own record of the run's registered checkpoints (None when absent or unreadable).

    A folder is registered only once every rank's upload finished, so a checkpoint half-copied when
    the job died is not in it. The format is Ray's: any surprise falls back to listing folders.
    """
    try:
        snap = json.loads((Path(run_dir) / SNAPSHOT).read_text())
        names = [r["checkpoint_dir_name"] for r in snap["checkpoint_results"]]
        latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        return {"registered": names, "latest": latest}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _by_step(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's usable checkpoint folders by step: those Ray Train registered, else every folder
    that holds a state file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    snap = _snapshot(run_dir)
    if snap is not None:
        names = set(snap["registered"]) | ({snap["latest"]} if snap["latest"] else set())
        return _by_step([run_dir / n for n in names if _STEP_DIR.match(n) and (run_dir / n / STATE_FILE).is_file()])
    return _by_step([p for p in run_dir.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()])


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint Ray Train restores a run from: the latest it registered, else the highest step."""
    snap = _snapshot(run_dir)
    if snap and snap["latest"] and (Path(run_dir) / snap["latest"] / STATE_FILE).is_file():
        return Path(run_dir) / snap["latest"]
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: Path, metric: str, mode: str) -> Path | None:
    """The kept checkpoint with the best ``metric`` (ties: the later step); None when none has it."""
    scored = []
    for p in list_checkpoints(run_dir):
        value = read_state(p).get("metrics", {}).get(metric)
        if value is not None:
            scored.append((value if mode == "max" else -value, int(p.name.split("-")[1]), p))
    return max(scored)[2] if scored else None


def resolve(spec: str, train_root: Path, metric: str = "val_token_f1", mode: str = "max") -> Path:
    """A checkpoint folder from what a user wrote: a path, RUN/step-NNNNNN, RUN/latest or RUN/best."""
    path = Path(spec).expanduser()
    if path.is_dir():
        read_state(path)
        return path.resolve()
    run, _, which = spec.partition("/")
    run_dir = Path(train_root) / run
    if not run or not run_dir.is_dir():
        raise CheckpointError(f"no checkpoint {spec!r}: neither a folder nor a run under {train_root} "
                              f"(runs: {', '.join(sorted(p.name for p in Path(train_root).iterdir() if p.is_dir())) if Path(train_root).is_dir() else 'none'})")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"run {run!r} has no checkpoints in {run_dir}")
    if which in ("", "latest"):
        return ckpts[-1]
    if which == "best":
        saved = read_run(run_dir)
        best = best_checkpoint(run_dir, saved.get("checkpoint_metric", metric), saved.get("checkpoint_mode", mode))
        if best is None:
            raise CheckpointError(f"run {run!r}: no checkpoint carries a validation metric to rank by")
        return best
    match = run_dir / which
    if not (match / STATE_FILE).is_file():
        raise CheckpointError(f"run {run!r} has no checkpoint {which!r}; it has: {', '.join(p.name for p in ckpts)}")
    return match


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); move the run folder away or pick another "
                              "training.run_name") from None


def write_run(run_dir: Path, record: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(run_dir / RUN_FILE)
