from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from app.serving.monitor import engine_metrics, render

TEXT = """\
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{model_name="a-very-long-model-name-instruct-b",WorkerId="1"} 3
# TYPE ray_vllm_time_to_first_token_seconds histogram
ray_vllm_time_to_first_token_seconds_bucket{model_name="a-very-long-model-name-instruct-b",le="+Inf"} 4
ray_vllm_time_to_first_token_seconds_sum{model_name="a-very-long-model-name-instruct-b"} 0.8
ray_vllm_time_to_first_token_seconds_count{model_name="a-very-long-model-name-instruct-b"} 4
# TYPE ray_vllm_generation_tokens_total counter
ray_vllm_generation_tokens_total{model_name="a-very-long-model-name-instruct-b"} 120
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/"} 9
"""


def samples():
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(TEXT) for s in f.samples]


def test_engine_metrics_grouped_by_model():
    m = engine_metrics(samples())["a-very-long-model-name-instruct-b"]
    assert m["num_requests_running"] == 3
    assert m["time_to_first_token_seconds_sum"] / m["time_to_first_token_seconds_count"] == 0.2
    assert m["generation_tokens_total"] == 120
    assert not any(k.endswith("_bucket") for k in m)


def test_render_keeps_model_ids_whole():
    stats = {"serve_queued": 0, "rss_mb": {"raylet": 100.0},
             "models": {"a-very-long-model-name-instruct-b": {
                 "running": 3, "waiting": 0, "kv_cache_usage": 0.25, "requests_per_s": 1, "output_tokens_per_s": 50,
                 "mean_ttft_ms": 200, "mean_tpot_ms": 20, "mean_e2e_ms": 900, "requests_total": 4}}}
    console = Console(width=120, record=True)
    console.print(render(stats))
    out = console.export_text()
    assert "a-very-long-model-name-instruct-b" in out and "25.0%" in out
