"""The kinds of objects reconciler manages, one module each, and their registry.

`kinds.all()` is every kind in dependency order (mirror, snapshot, publish): what a
kind is made from is registered before it. See kinds.registry for what a kind holds
and how the upper layers attach their parts to it.
"""

from reconciler.kinds import mirror, publish, snapshot
from reconciler.kinds.registry import Kind, Parts, Shape, all, attach, find, get, names, of_word, register, text, unregister, words

for _module in (mirror, snapshot, publish):  # dependency order
    register(_module.KIND)

__all__ = ["Kind", "Parts", "Shape", "all", "attach", "find", "get", "names", "of_word", "register", "text", "unregister",
           "words"]
