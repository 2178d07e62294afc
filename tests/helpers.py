"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

import jax


def param_shaped_subtrees(state, params):
    """Every part of ``state`` with exactly the params' tree structure (moments, buffers)."""
    found = []

    def visit(node):
        if jax.tree.structure(node) == jax.tree.structure(params):
            found.append(node)
        elif isinstance(node, tuple):
            for child in node:
                visit(child)

    visit(state)
    return found
