"""hyperhive-harness: what runs inside each agent's container (turn loop, event log, web UI,
MCP server)."""
