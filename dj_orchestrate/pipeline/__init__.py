"""Load a pipeline and find its auto-populated tables in dependency order.

A pipeline is an importable module path (``my_lab.pipeline``) or a path to a ``.py``
file. Every Computed/Imported table reachable from its namespace is a candidate; the
order and the levels come from DataJoint's own dependency graph.
"""

from .keys import check_key_attributes, parse_keys
from .load import check_spec, identity, load, resolve_spec
from .reads import MAKE_METHODS, code_references
from .tables import TableInfo, ancestors, auto_populated, discover, in_declared_order, levels_of, select

__all__ = ["MAKE_METHODS", "TableInfo", "ancestors", "auto_populated", "check_key_attributes", "check_spec",
           "code_references", "discover", "identity", "in_declared_order", "levels_of", "load", "parse_keys",
           "resolve_spec", "select"]
