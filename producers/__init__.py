"""Integration hooks that emit usage events (emitter, token counting, MCP, orchestrator,
memory, external APIs). The emitter and the hooks arrive with the pipeline-core and
integration-hooks issues; nothing is exported yet."""

__all__: list[str] = []
