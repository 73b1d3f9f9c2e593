"""The integrations: MCP (hooks, metering proxy, budget server), the task orchestrator,
memory stores and the OpenAI/Anthropic clients. Each builds on the client core one
level up (emitter, spool, reservations, token counting); their public names are exported
by `tokenquota.producers`."""
