"""Metering of text completions and responses that do not complete: the
chat endpoint's rule (the prompt once a backend took it, and what was sent),
with the raw prompt of a completion counted as text."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from privatai.core import tokens
from privatai.core.events import TextDelta
from tests.fakes import Hang
from tests.gateway import LocalGateway, eventually
from tests.scripted import ScriptedBackends

MODEL = "m"
PROMPT = "Once upon a time, in a land far away, there lived"


@pytest.mark.parametrize("path, body", [
    ("/completions", {"model": MODEL, "prompt": PROMPT, "stream": True}),
    ("/responses", {"model": MODEL, "input": PROMPT, "stream": True}),
])
async def test_a_client_that_leaves_is_billed_the_prompt_and_what_it_got(
        tmp_path: Path, scripted: ScriptedBackends, path: str, body: dict[str, object]) -> None:
    backend = scripted.backend("a")
    backend.reply(TextDelta(" a dragon"), Hang())
    async with LocalGateway(tmp_path, {"backends": [backend.entry(MODEL)]}) as gateway:
        key = await gateway.key()
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=30) as http:
            async with http.stream("POST", path, json=body) as answer:
                assert answer.status_code == 200
                async for line in answer.aiter_lines():
                    if "a dragon" in line:
                        break
            await backend.wait_closed(10)

            async def recorded() -> dict[str, int] | None:
                usage = (await http.get("/usage")).json()
                return usage if usage["requests"] else None

            usage = await eventually(recorded, what="usage recorded")
    if path == "/completions":
        # The raw prompt, as the backend read it: no chat message framing.
        prompt = tokens.count_text(PROMPT)
    else:
        prompt = tokens.count_prompt(backend.asked[-1].request)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, tokens.count_text(" a dragon"))
