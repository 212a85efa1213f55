"""The only package that imports the official `kubernetes` client: API clients, informers (list + watch) and
the writes kvsched makes (pod annotations and Bindings). Everything it hands out is plain data (dicts in the
API's JSON shape), so the controller and the extender stay testable without a cluster.
"""
