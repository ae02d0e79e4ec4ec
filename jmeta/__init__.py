"""jmeta: model metamers for graph neural networks, in JAX."""

from jmeta.graph import Graph, make_graph

__version__ = "0.1.0"

__all__ = ["Graph", "make_graph", "__version__"]
