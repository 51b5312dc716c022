"""Drives an MCP server with the official Python SDK and prints what it saw as JSON.

usage: python3 mcp_client.py URL SCENARIO
  full   list tools, echo, get-sum, a long-running operation with progress, a sampling request
  deny   echo (allowed), then get-sum (a test policy denies it); reports the error text
  long   a 6-second operation with progress; reports the progress seen and the error, if any
  env    get-env, then echo a card number
  big    against mcp_server.py: repeat "x" 100000 times; reports the length that came back
  demo   (cargo xtask demo) the server's name, its tools, echo, get-env, then gzip-file-as-resource
         (the demo's policy denies it); reports the error text
  journal  against mcp_server.py: echo, delete_file, read_file /etc/shadow, read_file /tmp/ok;
           reports each result or error

MCP_BEARER_TOKEN in the environment: sent as `Authorization: Bearer` on every request (an
OAuth access token, as an authorised client sends it).
"""
import asyncio
import json
import os
import sys

from mcp import Client, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def sampling(context, params):
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by the test client"),
        model="test-model",
    )


def text_of(result):
    return " ".join(c.text for c in result.content if getattr(c, "text", None))


async def main(url, scenario):
    out = {}
    progress = []

    async def on_progress(p, total, message):
        progress.append(p)

    # A URL ending in /sse is the legacy HTTP+SSE transport.
    server = sse_client(url) if url.endswith("/sse") else url
    token = os.environ.get("MCP_BEARER_TOKEN")
    if token:
        headers = {"Authorization": f"Bearer {token}"}
        server = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    mode = "legacy" if url.endswith("/sse") else "auto"
    async with Client(server, mode=mode, sampling_callback=sampling) as client:
        if scenario == "journal":
            calls = [("echo", {"message": "hi"}), ("delete_file", {"path": "/tmp/x"}),
                     ("read_file", {"path": "/etc/shadow"}), ("read_file", {"path": "/tmp/ok"})]
            out["calls"] = []
            for name, args in calls:
                try:
                    out["calls"].append({"tool": name, "result": text_of(await client.call_tool(name, args))})
                except Exception as e:
                    out["calls"].append({"tool": name, "error": str(e)})
            print(json.dumps(out))
            return
        if scenario == "env":
            out["env"] = text_of(await client.call_tool("get-env", {}))
            out["echo"] = text_of(await client.call_tool("echo", {"message": "card 4111 1111 1111 1111"}))
            print(json.dumps(out))
            return
        if scenario == "big":
            out["length"] = len(text_of(await client.call_tool("repeat", {"text": "x", "times": 100000})))
            print(json.dumps(out))
            return
        if scenario == "demo":
            info = client.server_info
            out["server"] = f"{info.name} {info.version}" if info else None
            out["protocol"] = client.protocol_version
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            out["echo"] = text_of(await client.call_tool("echo", {"message": "hello through interlock"}))
            out["env"] = text_of(await client.call_tool("get-env", {}))
            try:
                await client.call_tool("gzip-file-as-resource", {"name": "notes.gz", "data": "http://127.0.0.1:9/notes"})
                out["denied"] = None
            except Exception as e:  # the SDK raises on JSON-RPC errors
                out["denied"] = str(e)
            print(json.dumps(out))
            return
        if scenario == "long":
            try:
                await client.call_tool(
                    "trigger-long-running-operation", {"duration": 6, "steps": 6},
                    progress_callback=on_progress,
                )
                out["error"] = None
            except Exception as e:
                out["error"] = str(e) or type(e).__name__
            out["progress"] = progress
            print(json.dumps(out))
            return
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        out["echo"] = text_of(await client.call_tool("echo", {"message": "hello interlock"}))
        if scenario == "full":
            out["sum"] = text_of(await client.call_tool("get-sum", {"a": 2, "b": 40}))
            long = await client.call_tool(
                "trigger-long-running-operation",
                {"duration": 2, "steps": 4},
                progress_callback=on_progress,
            )
            out["long"] = text_of(long)
            out["progress"] = progress
            out["sampling"] = text_of(
                await client.call_tool("trigger-sampling-request", {"prompt": "say hi", "maxTokens": 20})
            )
        elif scenario == "deny":
            try:
                result = await client.call_tool("get-sum", {"a": 1, "b": 2})
                out["denied"] = None
                out["sum"] = text_of(result)
            except Exception as e:  # the SDK raises on JSON-RPC errors
                out["denied"] = str(e)
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
