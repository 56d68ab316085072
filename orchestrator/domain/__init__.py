"""The pure domain core: no I/O, no asyncio, no adapters."""
