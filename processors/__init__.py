"""The stream worker that projects usage events into PostgreSQL. It arrives with the
pipeline-core issue; nothing is exported yet."""

__all__: list[str] = []
