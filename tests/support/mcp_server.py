"""An MCP server (official Python SDK, stateless streamable HTTP: the 2026-07-28 era) that
journals every tool call it executes, so tests can prove from the server side what reached it.

usage: python3 mcp_server.py PORT JOURNAL_FILE [HOST]
  HOST defaults to 127.0.0.1; a server in a pod netns listens on 0.0.0.0
"""
import asyncio
import json
import sys

from mcp.server import MCPServer

port, journal = int(sys.argv[1]), sys.argv[2]
host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
server = MCPServer("journal")


def note(tool, **args):
    with open(journal, "a") as f:
        f.write(json.dumps({"tool": tool, "args": args}) + "\n")


@server.tool()
def echo(message: str) -> str:
    note("echo", message=message)
    return f"echo: {message}"


@server.tool()
def delete_file(path: str) -> str:
    note("delete_file", path=path)
    return f"deleted {path}"


@server.tool()
def read_file(path: str) -> str:
    note("read_file", path=path)
    return f"contents of {path}"


@server.tool()
def repeat(text: str, times: int) -> str:
    note("repeat", text=text, times=times)
    return text * times


asyncio.run(server.run_streamable_http_async(host=host, port=port, stateless_http=True))
