"""The splitter's logic with a stand-in engine (the deployment's integration test uses real vLLM)."""

import asyncio
from collections import Counter

import pytest

from app.ab.config import AbConfig
from app.ab.router import HEADER_ARM, HEADER_REQUEST, Splitter


class Engine:
    """Answers with the model's name, word by word; ``slow`` models take that long; ``broken`` raise."""

    def __init__(self, slow=None, broken=()):
        self.slow = slow or {}
        self.broken = set(broken)
        self.calls = []

    async def chat(self, model, body):
        self.calls.append((model, body.get("stream", False)))
        if model in self.broken:
            raise RuntimeError(f"{model} is down")
        await asyncio.sleep(self.slow.get(model, 0))
        words = f"answer from {model}".split()
        if body.get("stream"):
            for w in words:
                yield {"choices": [{"index": 0, "delta": {"content": w + " "}}]}
        else:
            yield {"choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)}}],
                   "usage": {"completion_tokens": len(words)}}


class Sink:
    def __init__(self):
        self.events = []

    def record(self, event):
        self.events.append(event)
        return event["id"]


def cfg(**kw):
    return AbConfig(experiment="exp", public_model="assistant", baseline="base",
                    arms=[{"name": "base", "model": "m-base", "weight": 0.5},
                          {"name": "ft", "model": "m-ft", "weight": 0.5}], **kw)


def body(q="What is 2+2?", stream=False, user=None):
    b = {"model": "assistant", "messages": [{"role": "user", "content": q}], "stream": stream}
    if user:
        b["user"] = user
    return b


async def answer(splitter, b, headers):
    routed = splitter.route(b, headers)
    chunks = [c async for c in routed.stream]
    return routed, chunks


def test_each_unit_always_gets_its_arm_and_the_split_follows_the_weights():
    sink = Sink()
    s = Splitter(cfg(), Engine(), sink)

    async def go():
        arms = {}
        for i in range(400):
            unit = f"user-{i % 100}"
            routed, chunks = await answer(s, body(), {"x-user-id": unit})
            assert arms.setdefault(unit, routed.arm) == routed.arm  # sticky
            assert chunks[0]["choices"][0]["message"]["content"] == f"answer from {routed.model}"
            assert routed.headers[HEADER_ARM] == routed.arm and routed.headers[HEADER_REQUEST] == routed.request_id
        return arms

    arms = asyncio.run(go())
    share = Counter(arms.values())["ft"] / len(arms)
    assert 0.35 < share < 0.65
    assert len(sink.events) == 400 and {e["role"] for e in sink.events} == {"served"}
    e = sink.events[0]
    assert e["question"] == "What is 2+2?" and e["status"] == "ok" and e["e2e_ms"] >= 0 and e["output_tokens"] == 3


def test_the_user_field_is_the_unit_without_the_header_and_streams_are_recorded_whole():
    sink = Sink()
    s = Splitter(cfg(), Engine(), sink)
    routed, chunks = asyncio.run(answer(s, body(stream=True, user="alice"), {}))
    assert len(chunks) == 3 and sink.events[0]["unit"] == "alice"
    assert sink.events[0]["answer"] == f"answer from {routed.model} " and sink.events[0]["ttft_ms"] is not None


def test_a_live_weight_change_moves_only_the_units_it_must():
    s = Splitter(cfg(), Engine(), Sink())
    units = [f"u{i}" for i in range(5000)]
    before = {u: s.arm_for(u)[0] for u in units}
    s.reconfigure({"base": 0.2, "ft": 0.8})
    after = {u: s.arm_for(u)[0] for u in units}
    moved = sum(before[u] != after[u] for u in units) / len(units)
    assert 0.25 < moved < 0.35 and all(after[u] == "ft" for u in units if before[u] == "ft")
    for bad, message in (({"base": 0.5}, "each arm"), ({"base": 0.5, "ft": 0.6}, "sum to 1"),
                         ({"base": -0.5, "ft": 1.5}, ">= 0")):
        with pytest.raises(ValueError, match=message):
            s.reconfigure(bad)
    with pytest.raises(ValueError, match="ab.shadow.enabled"):
        s.reconfigure(shadow_fraction=0.5)


def test_shadow_calls_never_delay_the_answer_and_are_recorded_beside_it():
    sink = Sink()
    engine = Engine(slow={"m-ft": 0.5})
    s = Splitter(cfg(shadow={"enabled": True, "fraction": 1.0, "max_in_flight": 2, "timeout_s": 5}), engine, sink)
    s.reconfigure({"base": 1.0, "ft": 0.0})  # everyone on the baseline, the candidate in the shadow

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(*(answer(s, body(q=f"q{i}"), {"x-user-id": f"u{i}"}) for i in range(5)))
        served_after = loop.time() - t0
        await s.drain()
        return results, served_after

    results, served_after = asyncio.run(go())
    assert served_after < 0.3  # the 0.5 s shadow calls were not awaited
    served = [e for e in sink.events if e["role"] == "served"]
    shadows = [e for e in sink.events if e["role"] == "shadow"]
    assert len(served) == 5 and len(shadows) == 5
    ok = [e for e in shadows if e["status"] == "ok"]
    shed = [e for e in shadows if e["status"] == "shed"]
    assert len(ok) == 2 and len(shed) == 3 and s.counters["shadow_shed"] == 3  # two slots
    assert {e["primary_id"] for e in shadows} == {e["id"] for e in served}
    assert all(e["answer"] == "answer from m-ft" for e in ok)
    assert ("m-ft", False) in engine.calls  # the shadow asks for a whole answer


def test_slow_and_failing_shadows_are_cut_and_counted():
    sink = Sink()
    s = Splitter(cfg(shadow={"enabled": True, "fraction": 1.0, "timeout_s": 0.05}), Engine(slow={"m-ft": 1.0}), sink)
    s.reconfigure({"base": 1.0, "ft": 0.0})

    async def go():
        await answer(s, body(), {"x-user-id": "a"})
        await s.drain()

    asyncio.run(go())
    assert [e["status"] for e in sink.events if e["role"] == "shadow"] == ["timeout"]
    sink2 = Sink()
    s2 = Splitter(cfg(shadow={"enabled": True}), Engine(broken={"m-ft"}), sink2)
    s2.reconfigure({"base": 1.0, "ft": 0.0})

    async def go2():
        routed, chunks = await answer(s2, body(), {"x-user-id": "a"})
        await s2.drain()
        return chunks

    assert asyncio.run(go2())[0]["choices"][0]["message"]["content"] == "answer from m-base"
    shadow = next(e for e in sink2.events if e["role"] == "shadow")
    assert shadow["status"] == "error" and "m-ft is down" in shadow["error"] and s2.counters["shadow_error"] == 1


def test_a_failing_arm_is_recorded_as_an_error_and_raised():
    sink = Sink()
    s = Splitter(cfg(), Engine(broken={"m-base", "m-ft"}), sink)
    with pytest.raises(RuntimeError, match="is down"):
        asyncio.run(answer(s, body(), {"x-user-id": "a"}))
    assert sink.events[0]["status"] == "error" and "is down" in sink.events[0]["error"]


def test_units_outside_the_coverage_get_the_baseline_uncounted():
    sink = Sink()
    s = Splitter(cfg(coverage=0.5), Engine(), sink)

    async def go():
        for i in range(200):
            await answer(s, body(), {"x-user-id": f"u{i}"})

    asyncio.run(go())
    outside = [e for e in sink.events if e["role"] == "outside"]
    assert 60 < len(outside) < 140 and all(e["arm"] == "base" for e in outside)


def test_the_serve_adapter_reads_every_shape_a_model_deployment_streams():
    """Ray's LLM deployments yield pydantic responses, dicts, SSE strings or batches of them."""
    from app.ab.deployment import chunks_of
    from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse

    sse = 'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: {"choices": [{"delta": {"content": "b"}}]}\n\n'
    assert [c["choices"][0]["delta"]["content"] for c in chunks_of([sse, "data: [DONE]\n\n"])] == ["a", "b"]
    assert chunks_of({"x": 1}) == [{"x": 1}]
    err = chunks_of(ErrorResponse(error=ErrorInfo(message="boom", type="BadRequest", code=400)))
    assert err[0]["error"]["message"] == "boom" and err[0]["error"]["code"] == 400
    with pytest.raises(TypeError):
        chunks_of(3)
