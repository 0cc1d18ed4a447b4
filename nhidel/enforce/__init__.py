"""Enforcement points: where nhidel checks a grant on every action an agent takes and injects
the human's secrets only where a sealed registration sends them (exec, the MCP gateway, the
HTTP broker)."""
