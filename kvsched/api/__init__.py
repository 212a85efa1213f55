"""What every part of kvsched shares, below the controller and the adapters: the names (CRD, labels,
annotations, env, defaults: `names`), the snapshot of the cluster the controller decides from (`objects`), and
the write records a decision asks for (`records`). Plain data; no I/O. Imports only kvsched.packer's types.
"""
