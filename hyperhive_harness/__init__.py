"""hyperhive-harness: what runs inside each agent's container (turn loop, Bus, MCP server)."""
