"""The API's modules import in one direction: app.py -> route modules -> common.py.

They once imported each other in a circle (app.py imported the routes inside a function,
the routes imported ApiError and friends back from app.py), and one route module used
another's private helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

API = REPO / "webhookd" / "api"
ROUTE_MODULES = ("ingest", "operators", "tenant_routes", "webhooks")
# The models, split by subject: the fields of tenants and the tenant routes' models apart.
MODEL_MODULES = (
    "webhookd.api.models",
    "webhookd.api.operation_models",
    "webhookd.api.tenant_models",
)


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, names) for every `from X import names` / `import X` in the file."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: list[tuple[str, list[str]]] = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def test_no_api_module_but_the_package_imports_app() -> None:
    for path in API.glob("*.py"):
        if path.name in ("__init__.py", "app.py"):
            continue
        modules = [module for module, _ in imports(path)]
        assert "webhookd.api.app" not in modules, path.name


def test_app_imports_the_route_modules_at_top_level() -> None:
    top = imports(API / "app.py", top_level_only=True)
    assert ("webhookd.api", sorted(ROUTE_MODULES)) in [(m, sorted(n)) for m, n in top]
    inside_functions = [
        node
        for node in ast.walk(ast.parse((API / "app.py").read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(isinstance(inner, ast.Import | ast.ImportFrom) for inner in ast.walk(node))
    ]
    assert inside_functions == []


def test_route_modules_share_only_public_names_of_common() -> None:
    # common.py (services, errors, bodies), models.py (the request and response models
    # the handlers validate with, from which the OpenAPI document is built) and render.py
    # (the store's records as the JSON objects the routes answer).
    shared = {"webhookd.api.common", "webhookd.api.render", *MODEL_MODULES}
    for name in ROUTE_MODULES:
        for module, names in imports(API / f"{name}.py"):
            if not module.startswith("webhookd.api"):
                continue
            assert module in shared, (name, module)
            assert not [n for n in names if n.startswith("_")], (name, names)


def test_models_import_no_route_module() -> None:
    modules = [module for module, _ in imports(API / "models.py")]
    # common, and the field types split off by subject (network_fields, tenant_fields,
    # trace_fields).
    api = [m for m in modules if m.startswith("webhookd.api")]
    assert set(api) <= {
        "webhookd.api.common",
        "webhookd.api.network_fields",
        "webhookd.api.tenant_fields",
        "webhookd.api.trace_fields",
    }, api
