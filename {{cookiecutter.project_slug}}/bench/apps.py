"""The two apps `make bench` compares: the service as it ships, and the same service with
its middleware stack (request id, metrics, JSON access log, host checks) taken off."""

from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.main import create_app

full: FastAPI = create_app()

bare: FastAPI = create_app()
bare.user_middleware.clear()
