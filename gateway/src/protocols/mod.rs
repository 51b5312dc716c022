//! Layer-7 protocols: HTTP/1.1 proxying with hyper, and MCP (JSON-RPC over Streamable HTTP
//! and SSE) on top of it.
pub mod http;
pub mod mcp;
pub mod target;
