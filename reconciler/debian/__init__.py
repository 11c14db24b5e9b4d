"""The only package that imports python-debian: formats, versions, the query language."""
