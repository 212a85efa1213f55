"""The processes: `kvsched controller`, `kvsched extender` and `kvsched serve` wired from the adapters (kvsched.k8s,
kvsched.extender, kvsched.metrics) and the decision core (kvsched.controller): the reconcile loop, the informers'
threads, leader election and the HTTP servers. Only kvsched.cli imports this package.
"""
