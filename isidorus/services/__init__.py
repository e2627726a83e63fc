"""Services: the catalog of libre alternatives isidorus can install, each described by a
declarative manifest (TOML) in `catalog/`, or in the operator's own directory.

Glossary
--------
manifest   One service's description: what it is and replaces, where it comes from, how
           it runs, authenticates, keeps its data and says it is healthy (manifest.py).
catalog    Every manifest isidorus knows: the built-in ones, then the operator's, which
           may add services or replace built-in ones by id (catalog.py).
"""
