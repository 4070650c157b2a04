"""`privatai audit`: prove on a running deployment that content is not kept.

The audit sends unique canary strings through the real API (prompts, a
streamed prompt, tool definitions and tool arguments, a malformed body, an
unknown model name, bad keys, a query string, headers, the web chat when it
is on, the website's sign-up, login and reset forms when accounts are on), records what came back (the completion text the model wrote becomes
a canary too), then scans the places a deployment keeps things: the SQLite
database with its ``-wal`` and ``-shm`` files and the rest of its directory,
the log files given, the systemd journal of the unit, and ``/metrics`` (a
Prometheus server stores it).
Any canary found there is a finding.

The report prints counts only, never the surrounding text of a finding (that
text would be someone's content); the canaries themselves are ours and are
printed so an auditor can search for them independently.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from privatai.ops.audit_portal import probe_portal
from privatai.ops.canary_scan import Canaries, ScanResult, db_files, read_journal, scan_bytes, scan_file, scan_tree

EXIT_PASS, EXIT_FINDING, EXIT_USAGE = 0, 1, 2


@dataclass
class Probe:
    """One request the audit sent and what came back."""

    name: str
    expected: tuple[int, ...]
    status: int | None = None
    received: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in self.expected


class Prober:
    """Sends the canary requests through the real API."""

    def __init__(self, url: str, key: str, model: str | None, canaries: Canaries,
                 timeout: float, max_tokens: int) -> None:
        base = url.rstrip("/")
        self.api = base if base.endswith(("/v1", "/api/v1")) else f"{base}/v1"
        self.root = re.sub(r"(/api)?/v1$", "", base)
        self.key = key
        self.model = model
        self.canaries = canaries
        self.max_tokens = max_tokens
        self.client = httpx.Client(timeout=timeout)
        self.probes: list[Probe] = []

    def close(self) -> None:
        self.client.close()

    def _headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def _body(self, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        # --model is the default; a probe's own model (the unknown one) wins.
        body: dict[str, Any] = {"messages": messages, "max_tokens": self.max_tokens, "temperature": 0}
        if self.model:
            body["model"] = self.model
        return {**body, **extra}

    def _post(self, probe: Probe, body: bytes | dict[str, Any], key: str | None = None,
              headers: dict[str, str] | None = None, path: str = "/chat/completions") -> httpx.Response | None:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        try:
            response = self.client.post(self.api + path, content=content,
                                        headers={**self._headers(key), "Content-Type": "application/json",
                                                 **(headers or {})})
        except httpx.HTTPError as exc:
            probe.note = f"request failed: {type(exc).__name__}"
            self.probes.append(probe)
            return None
        probe.status = response.status_code
        self.probes.append(probe)
        return response

    def check_key(self) -> int | None:
        """The status /models answers with the audit key (200 expected)."""
        try:
            return self.client.get(self.api + "/models", headers=self._headers()).status_code
        except httpx.HTTPError:
            return None

    def completion(self, name: str, messages: list[dict[str, Any]], **extra: Any) -> None:
        probe = Probe(name, (200,))
        response = self._post(probe, self._body(messages, **extra))
        if response is None:
            return
        if response.status_code == 200:
            message = response.json()["choices"][0]["message"]
            probe.received = (message.get("content") or "") + "".join(
                (call.get("function") or {}).get("arguments") or "" for call in message.get("tool_calls") or ())
            probe.note = f"{len(probe.received)} characters received"
            self.canaries.add_completion(f"completion: {name}", probe.received)

    def stream(self, name: str, messages: list[dict[str, Any]]) -> None:
        probe = Probe(name, (200,))
        content = orjson.dumps(self._body(messages, stream=True))
        parts: list[str] = []
        try:
            with self.client.stream("POST", self.api + "/chat/completions", content=content,
                                    headers={**self._headers(), "Content-Type": "application/json"}) as response:
                probe.status = response.status_code
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = orjson.loads(line[6:])
                    if "error" in data:
                        probe.note = "in-band error"
                    for choice in data.get("choices") or ():
                        delta = choice.get("delta") or {}
                        parts.append(delta.get("content") or "")
                        for call in delta.get("tool_calls") or ():
                            parts.append((call.get("function") or {}).get("arguments") or "")
        except httpx.HTTPError as exc:
            probe.note = f"request failed: {type(exc).__name__}"
        self.probes.append(probe)
        probe.received = "".join(parts)
        if probe.status == 200 and not probe.note:
            probe.note = f"{len(probe.received)} characters received"
        self.canaries.add_completion(f"completion: {name}", probe.received)

    def web_chat(self) -> None:
        """One streamed web-chat request, when the deployment has the web chat on."""
        try:
            models = self.client.get(f"{self.root}/webchat/api/models")
        except httpx.HTTPError:
            return
        if models.status_code != 200:
            return
        probe = Probe("web chat, streamed (no key)", (200, 429))
        body = {"stream": True, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": f"Repeat exactly: {self.canaries.add('web chat prompt')}"}]}
        try:
            response = self.client.post(f"{self.root}/webchat/api/chat/completions", json=body)
        except httpx.HTTPError as exc:
            probe.note = f"request failed: {type(exc).__name__}"
            self.probes.append(probe)
            return
        probe.status = response.status_code
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:]).get("choices") or ():
                    probe.received += (choice.get("delta") or {}).get("content") or ""
        probe.note = f"{len(probe.received)} characters received" if probe.status == 200 else "rate-limited"
        self.probes.append(probe)
        self.canaries.add_completion("completion: web chat", probe.received)

    def metrics(self, token: str | None) -> ScanResult | None:
        """/metrics as Prometheus would scrape it (its database is another copy)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self.client.get(f"{self.root}/metrics", headers=headers)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return ScanResult(f"{self.root}/metrics", note=f"skipped: HTTP {response.status_code}")
        return scan_bytes(f"{self.root}/metrics", response.content, self.canaries)

    def run(self) -> None:
        c = self.canaries
        prompt = c.add("prompt")
        self.completion("chat, non-streamed", [
            {"role": "system", "content": f"You are a test. Reference {c.add('system prompt')}."},
            {"role": "user", "content": f"Repeat this code exactly and nothing else: {prompt}"}])
        streamed = c.add("streamed prompt")
        self.stream("chat, streamed", [
            {"role": "user", "content": f"Repeat this code exactly and nothing else: {streamed}"}])
        tool_name = "lookup_" + uuid.uuid4().hex[:12]
        c.add("tool name", tool_name)
        arguments = orjson.dumps({"query": c.add("tool call arguments (history)")}).decode()
        self.completion("tools: definitions, tool call and result in history", [
            {"role": "user", "content": f"Look this up: {c.add('prompt with tools')}"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_audit", "type": "function", "function": {"name": tool_name, "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_audit", "content": f"Result: {c.add('tool result')}"},
            {"role": "user", "content": "Now call the tool again with the same query."}],
            tools=[{"type": "function", "function": {
                "name": tool_name, "description": f"Looks up {c.add('tool description')}",
                "parameters": {"type": "object", "properties": {"query": {
                    "type": "string", "description": c.add("tool parameter description")}},
                    "required": ["query"]}}}])
        self._post(Probe("malformed JSON body", (400,)),
                   f'{{"messages": [{{"role": "user", "content": "{c.add("malformed body")}"'.encode())
        self._post(Probe("invalid field value", (400,)),
                   {"messages": [{"role": c.add("invalid role value"), "content": "x"}]})
        self._post(Probe("unknown model", (404,)),
                   self._body([{"role": "user", "content": "x"}], model=c.add("unknown model name")))
        bad_key = "privat_" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
        c.add("unknown well-formed key", bad_key)
        c.add("SHA-256 of the unknown key", hashlib.sha256(bad_key.encode()).hexdigest())
        self._post(Probe("unknown key", (401,)), self._body([{"role": "user", "content": "x"}]), key=bad_key)
        self._post(Probe("malformed key", (401,)), self._body([{"role": "user", "content": "x"}]),
                   key=c.add("malformed key"))
        self._post(Probe("query string and headers", (200, 400, 404, 405)),
                   self._body([{"role": "user", "content": "Say OK."}], max_tokens=2),
                   path=f"/chat/completions?q={c.add('query string')}",
                   headers={"User-Agent": c.add("user agent"), "X-Forwarded-For": "198.51.100.7",
                            "Cookie": f"session={c.add('cookie')}"})
        self.web_chat()
        probe_portal(self)
        probe = Probe("unknown route", (404,))
        try:
            probe.status = self.client.get(f"{self.api}/models/{c.add('route path')}",
                                           headers=self._headers()).status_code
        except httpx.HTTPError as exc:
            probe.note = f"request failed: {type(exc).__name__}"
        self.probes.append(probe)


# -- the report ----------------------------------------------------------------

def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def render(url: str, key_prefix: str, probes: list[Probe], results: list[ScanResult], canaries: Canaries,
           notes: list[str], verdict: str) -> str:
    lines = [f"PrivatAI privacy audit of {url}", ""]
    lines.append(f"Requests sent (their usage is recorded against the key {key_prefix}…, as for any client):")
    lines.append(_table([("request", "status", "expected", "")] + [
        (p.name, str(p.status) if p.status is not None else "-", "/".join(map(str, p.expected)),
         p.note if p.ok else f"UNEXPECTED {p.note}".rstrip()) for p in probes]))
    lines.append("")
    lines.append(f"Canaries ({len(canaries.values)}; each searched as UTF-8 and UTF-16):")
    lines.append(_table([(label, value.encode("unicode_escape").decode("ascii"))
                         for label, value in canaries.values.items()]))
    lines.append("")
    lines.append("Scanned (counts only; the text around a finding is never printed):")
    rows = [("place", "files", "bytes", "canaries found", "")]
    for r in results:
        status = "ERROR " + r.error if r.error else (r.note or "")
        rows.append((r.name, str(r.files), str(r.nbytes), str(r.total), status))
    lines.append(_table(rows))
    findings = [(r.name, label, count) for r in results for label, count in r.found.items()]
    if findings:
        lines.append("")
        lines.append("Findings:")
        lines.append(_table([(name, label, f"{count}x") for name, label, count in findings]))
    for note in notes:
        lines.append(f"Note: {note}")
    lines.append("")
    lines.append(f"Result: {verdict}")
    return "\n".join(lines)


def audit(args: argparse.Namespace) -> int:
    from privatai.config import load_config
    from privatai.errors import ConfigError
    from privatai.store.keys import display_prefix

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"privatai audit: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log_files = [Path(p) for p in args.log_file or ()]
    for path in log_files:
        if not path.is_file() or not os.access(path, os.R_OK):
            print(f"privatai audit: cannot read log file {path}", file=sys.stderr)
            return EXIT_USAGE
    sizes = {path: path.stat().st_size for path in log_files}
    canaries = Canaries()
    canaries.add("API key used by the audit", args.key)
    prober = Prober(args.url, args.key, args.model, canaries, args.timeout, args.max_tokens)
    started = time.time()
    try:
        status = prober.check_key()
        if status is None:
            print(f"privatai audit: cannot reach {prober.api}", file=sys.stderr)
            return EXIT_USAGE
        if status != 200:
            print(f"privatai audit: the key was not accepted (GET /models answered {status})", file=sys.stderr)
            return EXIT_USAGE
        prober.run()
        # Usage is written in batches; give the server time to write (and the
        # journal time to receive) whatever it would keep.
        time.sleep(args.settle if args.settle is not None else config.store.flush_interval + 1.5)
        metrics = prober.metrics(os.environ.get(config.metrics.token_env) or None) \
            if config.metrics.enabled else None
    finally:
        prober.close()

    results: list[ScanResult] = []
    notes: list[str] = []
    incomplete = False
    files = db_files(config.store.path)
    for path in files:
        if path.exists():
            results.append(scan_file(path, canaries))
        elif not path.name.endswith("-journal"):
            results.append(ScanResult(str(path), note="absent"))
    if files:
        directory = files[0].parent
        others = scan_tree(f"{directory}/ (all other files)", directory, canaries,
                           skip=files + log_files)
        results.append(others)
    for path in log_files:
        result = scan_file(path, canaries)
        if path.stat().st_size == sizes[path] and config.logging.level in ("DEBUG", "INFO"):
            result.note = "did not grow during the audit: is this the server's log?"
        results.append(result)
    if args.journal_unit:
        data, error = read_journal(args.journal_unit, started)
        if data is None:
            results.append(ScanResult(f"journal of {args.journal_unit}", note=f"skipped: {error}"))
            notes.append(f"the journal was not scanned ({error})")
        else:
            result = scan_bytes(f"journal of {args.journal_unit}", data, canaries)
            if not data and config.logging.level in ("DEBUG", "INFO"):
                result.error = "no lines since the audit started (unit name? permission to read the journal?)"
            results.append(result)
    if metrics is not None:
        results.append(metrics)
    notes.append("temporary files of the service (PrivateTmp) and core dumps are not visible from here; "
                 "the server disables core dumps itself (RLIMIT_CORE 0)")
    if any(r.error for r in results):
        incomplete = True
    unexpected = [p for p in prober.probes if not p.ok]
    if unexpected:
        notes.append(f"{len(unexpected)} request(s) were answered unexpectedly; the audit covers less")
    found = sum(r.total for r in results)
    verdict = (f"FAIL: {found} canary occurrence(s) found" if found else
               "INCOMPLETE: some places could not be scanned" if incomplete else "PASS: no canary found")
    print(render(args.url, display_prefix(args.key), prober.probes, results, canaries, notes, verdict))
    if found:
        return EXIT_FINDING
    return EXIT_USAGE if incomplete else EXIT_PASS


def register(sub: Any) -> None:
    """Add ``privatai audit`` to the CLI."""
    parser = sub.add_parser(
        "audit", help="send canaries through a running deployment and scan its logs and state",
        description="Send unique canary strings through the running API, then scan the database "
                    "(with -wal/-shm), its directory, the given log files and the journal for them. "
                    "Exit 0: pass, 1: a canary was found, 2: usage error or incomplete audit.")
    parser.add_argument("--url", required=True, help="the deployment, e.g. http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an API key (the audit's usage is recorded against it)")
    parser.add_argument("--config", default="backends.yaml", help="the server's backends.yaml (for store.path)")
    parser.add_argument("--log-file", action="append", metavar="PATH", help="a log file to scan (repeatable)")
    parser.add_argument("--journal-unit", metavar="UNIT", help="scan this systemd unit's journal, e.g. privatai")
    parser.add_argument("--model", help="model to ask (default: the server's default)")
    parser.add_argument("--max-tokens", type=int, default=48, help="completion length per request")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--settle", type=float, help="seconds to wait before scanning "
                                                     "(default: store.flush_interval + 1.5)")
    parser.set_defaults(func=audit)
