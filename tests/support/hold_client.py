"""Makes MCP tool calls concurrently with the official Python SDK, optionally as a bearer-token
identity, and prints each call's outcome as JSON: what a held request's client observes.

usage: python3 hold_client.py URL CALLS_JSON [BEARER_TOKEN]
  CALLS_JSON: [{"tool": "delete_file", "args": {"path": "/tmp/x"}}, ...]
"""
import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return " ".join(c.text for c in result.content if getattr(c, "text", None))


async def main(url, calls, token):
    headers = {"authorization": f"Bearer {token}"} if token else None
    # The SDK's own timeouts (30 s, 300 s read), with room for every call at once.
    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30, read=300),
        limits=httpx2.Limits(max_connections=len(calls) + 10),
    )
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        async def call(c):
            try:
                return {**c, "result": text_of(await client.call_tool(c["tool"], c["args"]))}
            except Exception as e:  # the SDK raises on JSON-RPC errors
                return {**c, "error": str(e) or type(e).__name__}

        print(json.dumps(await asyncio.gather(*(call(c) for c in calls))), flush=True)


asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
