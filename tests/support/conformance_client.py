"""The client under test for the conformance client scenarios: the official Python SDK.
The suite passes the server URL as the last argument and the scenario in
MCP_CONFORMANCE_SCENARIO."""
import asyncio
import os
import sys

from mcp import Client


async def main(url, scenario):
    # The suite's fixtures speak the 2025-11-25 session-based era: initialize first.
    async with Client(url, mode="legacy") as client:
        await client.list_tools()
        if scenario == "tools_call":
            await client.call_tool("add_numbers", {"a": 2, "b": 3})


asyncio.run(main(sys.argv[-1], os.environ.get("MCP_CONFORMANCE_SCENARIO", "initialize")))
