"""Sphinx configuration of jslide's documentation site.

Build (warnings are errors; CI runs the same command through tests/test_docs.py):

    sphinx-build -W --keep-going -b html docs docs/_build/html

Pages are MyST Markdown; the API reference is autodoc/autosummary over each module's
``__all__``, docstrings in the Google style (``Args:``, ``Returns:``) read by napoleon.
"""

import jslide

project = "jslide"
author = "the jslide authors"
copyright = "2026, the jslide authors"
release = jslide.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "api/_generated/*.md"]

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# The API reference: one page per public module; each lists its __all__ and documents every
# name in it (imported from submodules included), in source order.
autosummary_generate = False
autodoc_default_options = {"members": True, "imported-members": True, "member-order": "bysource",
                           "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# jax and flax objects appear in signatures; their documentation is not part of this build.
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "jslide"
html_theme_options = {"repository_url": "https://github.com/jslide/jslide",
                      "use_repository_button": False, "show_toc_level": 2}
