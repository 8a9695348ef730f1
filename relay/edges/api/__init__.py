"""The HTTP API of the contract, served by aiohttp inside the daemon's event loop."""
