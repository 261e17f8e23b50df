"""The hub's own libraries, checked first: the default install is the agent alone.

Without the ``[hub]`` extra, importing the hub names what to install instead of failing
deep inside an import of FastAPI or SQLAlchemy.
"""

from __future__ import annotations

import importlib

HUB_LIBRARIES = ("fastapi", "fastapi_offline", "uvicorn", "pydantic_settings", "sqlalchemy")

for _name in HUB_LIBRARIES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the cloud hub needs {exc.name or _name}, which the agent-only install leaves "
            "out: pip install 'edge-cloud-runtime[hub]'", name=exc.name,
        ) from exc
