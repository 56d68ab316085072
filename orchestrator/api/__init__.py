"""HTTP adapter: the seed device-communication API and the orchestrator's own routes.

The app is built by `orchestrator.api.app.create_app`. Importing this package loads nothing
else, so the client and the CLI read the answer models (`orchestrator.api.schemas`) without
loading the service.
"""
