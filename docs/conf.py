"""Sphinx configuration for the optim_chain documentation site.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (warnings are
errors: a broken reference or formula fails the build).
"""

import optim_chain

project = "optim_chain"
author = "the optim_chain developers"
copyright = "the optim_chain developers"
release = optim_chain.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' Google style: Args, Returns, Raises
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "myst_parser",
    # MathJax served from the built site itself (no CDN): formulas render offline too
    "sphinx-mathjax-offline",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# No network at build time: references to other projects' docs stay plain text.
intersphinx_mapping: dict = {}
nitpicky = False
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = f"optim_chain {release}"
html_static_path = ["_static"]
