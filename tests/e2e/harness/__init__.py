"""The e2e harness: a real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK on 127.0.0.1.

Used by tests/e2e/conftest.py. `tools` finds the binaries that tests/e2e/cluster/build.sh cached, `certs` writes
the TLS material and kubeconfig, `processes` runs and stops the components, `cluster` wires them into a control
plane, and `kube` holds the Kubernetes helpers the tests call (GPU nodes, CRDs, pods).
"""
