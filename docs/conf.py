"""Sphinx configuration of the ls_lightning documentation: Markdown guides (MyST) and an API reference (autodoc)."""

from typing import Any

from sphinx.application import Sphinx

import ls_lightning

project = "ls_lightning"
author = "ls_lightning contributors"
copyright = "ls_lightning contributors"
release = ls_lightning.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings are Google style
    "sphinx.ext.mathjax",  # their ``.. math::`` blocks; MathJax is loaded by the reader's browser, not at build time
]
# Nothing is fetched at build time: no intersphinx, so references to torch, Lightning or torchmetrics stay plain
# text; nitpicky stays off so that those unresolved references are not warnings.
nitpicky = False

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# The report tables that docs/regimes.sh writes are copied into does-it-help.md, not pages of their own.
exclude_patterns = ["_build", "report_*.md", "Thumbs.db", ".DS_Store"]

# Guides: `[text](page.md#a-heading)` links work on GitHub and here.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# API reference: only what each object documents itself (not the docstrings of the Lightning, torchmetrics or torch
# methods it overrides), in source order, with the signature's type hints as written.
autodoc_default_options = {"members": True, "member-order": "bysource", "exclude-members": "__new__"}
autodoc_inherit_docstrings = False
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"ls_lightning {release}"
html_static_path: list[str] = []


def _tidy_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Render two docstring habits that reST reads otherwise, without changing the docstrings themselves."""
    # A module-level constant has no docstring of its own: autodoc would show its type's (dict's, tuple's).
    if what == "data" and lines and type(obj).__doc__ and lines[0] == type(obj).__doc__.splitlines()[0]:
        lines.clear()
    # A NamedTuple field's generated "Alias for field number 0" says nothing the class's docstring does not.
    if what == "attribute" and len(lines) == 1 and lines[0].startswith("Alias for field number"):
        lines.clear()
    # The conditional prior u(·|y) in prose: a bare "|" starts a reST substitution reference.
    lines[:] = [line.replace("u(·|y)", r"u(·\|y)") for line in lines]


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", _tidy_docstring)
