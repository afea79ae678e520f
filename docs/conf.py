"""Sphinx configuration: the guides, the API reference from the docstrings, the benchmark results.

Build with warnings as errors, as CI does::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, List

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import deepseek_pool  # noqa: E402
import deepseek_pool.testing  # noqa: E402

project = "deepseek-pool"
author = "the deepseek-pool developers"
copyright = "the deepseek-pool developers"
release = version = deepseek_pool.__version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
exclude_patterns = ["_build"]
root_doc = "index"

# nitpicky stays off: it reports ~60 references to names the reference does not document
# (module constants, private helpers, requests' and urllib3's types, with no intersphinx
# offline); a reference to a name that is documented resolves either way.
nitpicky = False

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
# Optional extras (and pytest, for the plugin): document their modules where they are not installed.
autodoc_mock_imports = [name for name in ("redis", "celery", "pytest") if importlib.util.find_spec(name) is None]

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"deepseek-pool {release}"

#: Objects documented in the public reference (api.rst); the internals pages leave them out.
PUBLIC_MODULES = {"deepseek_pool", "deepseek_pool.testing", "deepseek_pool.contrib.celery"}
PUBLIC_OBJECTS = {
    id(getattr(module, name))
    for module in (deepseek_pool, deepseek_pool.testing)
    for name in module.__all__
    if not name.startswith("__")
}


def _documented_module(app: Sphinx) -> str:
    current = getattr(app.env, "current_document", None)  # newer Sphinx; older ones use temp_data
    name = getattr(current, "autodoc_module", None)
    return name if name is not None else app.env.temp_data.get("autodoc:module", "")


def skip_public_in_internals(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    """Each object is documented once: a public one under its public name, the others where defined.

    The internals pages leave out the public names and what a module re-exports from another
    module of the package (``client`` re-exports ``messages``' helpers, for one).
    """
    module = _documented_module(app)
    if what != "module" or module in PUBLIC_MODULES:
        return None
    if id(obj) in PUBLIC_OBJECTS:
        return True
    defined_in = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isfunction(obj) else None
    if isinstance(defined_in, str) and defined_in.startswith("deepseek_pool") and defined_in != module:
        return True
    return None


class IncludeIfExists(SphinxDirective):
    """``.. include-if-exists:: PATH``: the file, or the directive's content when it is absent."""

    required_arguments = 1
    has_content = True

    def run(self) -> List[nodes.Node]:
        relative, absolute = self.env.relfn2path(self.arguments[0])
        self.env.note_dependency(relative)  # rebuilt when the file appears, changes or goes
        if not os.path.exists(absolute):
            container = nodes.container()
            nested_parse_with_titles(self.state, self.content, container)
            return container.children
        self.state_machine.insert_input(Path(absolute).read_text(encoding="utf-8").splitlines(), absolute)
        return []


def setup(app: Sphinx) -> None:
    app.connect("autodoc-skip-member", skip_public_in_internals)
    app.add_directive("include-if-exists", IncludeIfExists)
